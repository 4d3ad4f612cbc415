# The image of `tally serve`, `tally worker` and `tally migrate` (see docker-compose.yml).
FROM node:20-slim
WORKDIR /app
COPY . .
# npm ci builds dist/ (prepare); the dev dependencies it needed are dropped afterwards.
RUN npm ci && npm prune --omit=dev && npm cache clean --force
USER node
ENTRYPOINT ["node", "bin/tally.js"]
