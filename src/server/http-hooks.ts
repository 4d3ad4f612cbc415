import type { FastifyPluginCallback } from 'fastify';
import fastifyPlugin from 'fastify-plugin';
import type { HttpMetrics } from './http-metrics.js';

/** What every request goes through, on every route: encodings refused, closing, metrics. */
const hooks: FastifyPluginCallback<{ metrics: HttpMetrics }> = (app, { metrics }, done) => {
  // A compressed body would reach the JSON parser as bytes: refuse it before reading it.
  app.addHook('onRequest', (request, _reply, done) => {
    const encoding = request.headers['content-encoding'];
    if (encoding === undefined || encoding.toLowerCase() === 'identity') done();
    else done(Object.assign(new Error('content-encoding'), { statusCode: 415 }));
  });
  // Closing: answers in flight tell their clients to close the connection, so that a keep-alive
  // client cannot hold the server open after its last answer.
  let closing = false;
  app.addHook('preClose', (done) => {
    closing = true;
    done();
  });
  app.addHook('onSend', (_request, reply, payload, done) => {
    if (closing) void reply.header('connection', 'close');
    done(null, payload);
  });
  app.addHook('onResponse', (request, reply, done) => {
    const route = request.routeOptions.url ?? 'unmatched';
    metrics.requests.inc({ method: request.method, route, status: reply.statusCode });
    metrics.duration.observe({ method: request.method, route }, reply.elapsedTime / 1_000);
    done();
  });

  done();
};

/** fastify-plugin: the hooks apply to the routes registered beside them, not only inside. */
export const httpHooks = fastifyPlugin(hooks, { name: 'tally-http-hooks' });
