import type { Socket } from 'node:net';
import Fastify, { LogController, type FastifyError, type FastifyReply } from 'fastify';
import type { Logger } from 'pino';
import type { Tally } from '../tally.js';
import { requireTokens } from './auth.js';
import { deletionRoutes } from './deletion-routes.js';
import { counterRoutes } from './counter-routes.js';
import { answerMethodNotAllowed } from './method-not-allowed.js';
import { clientErrorResponse, toHttpError } from './http-errors.js';
import { registerDurabilityGauge } from '../redis/durability-metric.js';
import { HttpMetrics } from './http-metrics.js';
import { httpHooks } from './http-hooks.js';
import { registerOpenApi } from './openapi.js';
import { operationRoutes } from './operation-routes.js';
import { usageRoutes } from './usage-routes.js';
import { maxBatchDefault } from './schemas.js';

export interface ApiOptions {
  tally: Tally;
  /** Bearer tokens accepted on /v1 routes; empty: no authentication. */
  tokens: readonly string[];
  bodyLimitBytes?: number;
  maxBatch?: number;
  /** Longest time to receive a whole request, headers and body (slow clients are cut off). */
  requestTimeoutMs?: number;
  /** How long an idle keep-alive connection stays open. */
  keepAliveTimeoutMs?: number;
  /** Usage queries, exports and listings running at once; more answer 503 BUSY. */
  maxConcurrentQueries?: number;
  /** A CSV export whose client takes nothing for this long is cut off. */
  exportIdleTimeoutMs?: number;
  logger: Logger;
}

/** Defaults of the HTTP limits (also `tally serve`'s). */
export const httpDefaults = {
  bodyLimitBytes: 1_048_576,
  requestTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5_000,
  maxConcurrentQueries: 4,
  exportIdleTimeoutMs: 30_000,
} as const;

/**
 * The longest path parameter: a counter name is at most 256 bytes of UTF-8, each byte at most
 * three characters once percent-encoded. (Fastify's default of 100 made names of 101–256 bytes
 * unreadable by path.)
 */
const maxParamLength = 3 * 256;

/** The HTTP API, ready to listen (or to `inject` in tests). */
export async function buildApi(options: ApiOptions) {
  const { tally, tokens } = options;
  const maxBatch = options.maxBatch ?? maxBatchDefault;
  const metrics = new HttpMetrics();
  registerDurabilityGauge(metrics.registry, () => tally.durability);
  const requestTimeoutMs = options.requestTimeoutMs ?? httpDefaults.requestTimeoutMs;
  const sendError = (error: unknown, reply: FastifyReply) => {
    const { status, body } = toHttpError(error);
    metrics.errors.inc({ code: body.error.code });
    if (status === 401) void reply.header('www-authenticate', 'Bearer');
    return reply.status(status).send(body);
  };
  const app = Fastify({
    loggerInstance: options.logger,
    bodyLimit: options.bodyLimitBytes ?? httpDefaults.bodyLimitBytes,
    // A client sending its request a byte at a time is cut off once requestTimeoutMs has passed
    // since it started (Node checks every connectionsCheckingInterval), not held open forever.
    requestTimeout: requestTimeoutMs,
    keepAliveTimeout: options.keepAliveTimeoutMs ?? httpDefaults.keepAliveTimeoutMs,
    http: {
      headersTimeout: requestTimeoutMs,
      connectionsCheckingInterval: Math.min(1_000, requestTimeoutMs),
    },
    // Errors of the router itself (a bad percent-encoding, an over-long parameter) answer in
    // the API's error shape, without echoing the URL.
    frameworkErrors: (error: FastifyError, _request, reply) => {
      void sendError(error, reply);
    },
    clientErrorHandler: (error: NodeJS.ErrnoException, socket: Socket) => {
      if (error.code !== 'ECONNRESET' && !socket.destroyed && socket.writable) {
        metrics.errors.inc({ code: 'CLIENT_ERROR' });
        socket.write(clientErrorResponse(error));
      }
      socket.destroy();
    },
    // Metrics count the traffic; the log keeps failures.
    logController: new LogController({ disableRequestLogging: true }),
    // Requests are taken as they come: no type coercion, no silently dropped fields.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    // A counter name may hold '/', sent percent-encoded; route on the raw path, decode params.
    routerOptions: { ignoreDuplicateSlashes: false, maxParamLength },
  });
  // Routes are collected as they are declared, for the 405 answers added once all are in.
  const declared = answerMethodNotAllowed(app);

  // JSON only: Fastify's default text/plain parser would let other bodies reach validation.
  app.removeContentTypeParser('text/plain');

  await app.register(registerOpenApi, { authenticated: tokens.length > 0 });

  app.setErrorHandler((error, request, reply) => {
    if (toHttpError(error).status >= 500) request.log.error({ err: error }, 'request failed');
    return sendError(error, reply);
  });
  app.setNotFoundHandler((request, reply) => {
    metrics.errors.inc({ code: 'NOT_FOUND' });
    return reply.status(404).send({
      error: { code: 'NOT_FOUND', message: `No route answers ${request.method} on this path.` },
    });
  });

  await app.register(requireTokens, { tokens });
  await app.register(httpHooks, { metrics });
  await app.register(counterRoutes, { tally, maxBatch, metrics });
  await app.register(deletionRoutes, { tally, tokens });
  await app.register(usageRoutes, {
    tally,
    maxConcurrentQueries: options.maxConcurrentQueries ?? httpDefaults.maxConcurrentQueries,
    exportIdleTimeoutMs: options.exportIdleTimeoutMs ?? httpDefaults.exportIdleTimeoutMs,
  });
  await app.register(operationRoutes, { tally, tokens, metrics });

  declared.answerOtherMethods();
  await app.ready();
  return app;
}
