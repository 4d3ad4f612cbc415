import type { FastifyInstance, HTTPMethods } from 'fastify';

const methods: readonly HTTPMethods[] = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'];

/**
 * A wrong method on a known path answers 405 with `Allow`, not 404 (Fastify knows no 405). The
 * routes are collected as they are declared; `answerOtherMethods`, called once every route is
 * in, declares the other methods of each path. They take the path's `open` flag, so a 405 tells
 * no more than the route itself would without a token.
 */
// Any instance: the API's has a pino logger type, which Fastify's defaults lack.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function answerMethodNotAllowed(app: FastifyInstance<any, any, any, any>): {
  answerOtherMethods(): void;
} {
  const byPath = new Map<string, { methods: Set<string>; open: boolean }>();
  app.addHook('onRoute', (route) => {
    const entry = byPath.get(route.url) ?? { methods: new Set<string>(), open: false };
    for (const method of [route.method].flat()) entry.methods.add(method);
    entry.open ||= route.config?.open === true;
    byPath.set(route.url, entry);
  });
  return {
    answerOtherMethods() {
      for (const [url, entry] of [...byPath]) {
        const others = methods.filter((method) => !entry.methods.has(method));
        if (others.length === 0) continue;
        const allow = methods.filter((method) => entry.methods.has(method)).join(', ');
        app.route({
          method: others,
          url,
          schema: { hide: true },
          config: { open: entry.open },
          handler: async (_request, reply) => {
            void reply.header('allow', allow);
            throw Object.assign(new Error('method not allowed'), { statusCode: 405 });
          },
        });
      }
    },
  };
}
