import type { Socket } from 'node:net';
import swagger from '@fastify/swagger';
import Fastify, { LogController, type FastifyError, type FastifyReply } from 'fastify';
import type { Logger } from 'pino';
import { canonicalName, type CounterRef } from '../counters/counter-name.js';
import { OverflowError, TallyError } from '../errors.js';
import type { BatchIncrementResult } from '../engine/increments.js';
import { packageVersion } from '../process/package-files.js';
import type { Tally } from '../tally.js';
import { sharedFor } from '../engine/concurrency.js';
import { isAuthenticated, requireTokens } from './auth.js';
import { answerMethodNotAllowed } from './method-not-allowed.js';
import { clientErrorResponse, toHttpError } from './http-errors.js';
import { registerDurabilityGauge } from '../redis/durability-metric.js';
import { HttpMetrics } from './http-metrics.js';
import {
  incrementBatchSchema,
  incrementOneSchema,
  maxBatchDefault,
  readManySchema,
  readOneSchema,
  usageSchema,
} from './schemas.js';

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
  logger: Logger;
}

/** Defaults of the HTTP limits (also `tally serve`'s). */
export const httpDefaults = {
  bodyLimitBytes: 1_048_576,
  requestTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5_000,
} as const;

/**
 * The longest path parameter: a counter name is at most 256 bytes of UTF-8, each byte at most
 * three characters once percent-encoded. (Fastify's default of 100 made names of 101–256 bytes
 * unreadable by path.)
 */
const maxParamLength = 3 * 256;

/** How answers name a counter: a plain name as sent (the engine validated it), labels canonical. */
const nameOf = (ref: CounterRef) => (typeof ref === 'string' ? ref : canonicalName(ref));

function resultBody(counter: string, result: BatchIncrementResult) {
  return { counter, value: result.value, duplicate: result.duplicate, status: result.status };
}

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

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Tally', version: packageVersion, description: 'Write-behind counters.' },
      components: {
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      },
      ...(tokens.length > 0 ? { security: [{ bearer: [] }] } : {}),
    },
    // Fastify needs a body schema to validate one, and the generator then calls the body
    // required; the single increment takes none (an empty POST counts 1).
    transformObject: (document) => {
      if (!('openapiObject' in document)) return document.swaggerObject;
      const single = document.openapiObject.paths?.['/v1/counters/{counter}/increment']?.post;
      if (single?.requestBody !== undefined && 'required' in single.requestBody) {
        single.requestBody.required = false;
      }
      return document.openapiObject;
    },
  });

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

  app.post<{
    Body: {
      increments: {
        counter: CounterRef;
        by?: number;
        idempotencyKey?: string;
        at?: string;
        limit?: number;
      }[];
    };
  }>('/v1/increments', { schema: incrementBatchSchema(maxBatch) }, async (request) => {
    const items = request.body.increments;
    const results = await tally.incrMany(
      items.map((item) => ({
        counter: item.counter,
        by: item.by ?? 1,
        ...(item.idempotencyKey === undefined ? {} : { idempotencyKey: item.idempotencyKey }),
        ...(item.limit === undefined ? {} : { limit: item.limit }),
        ...(item.at === undefined ? {} : { at: new Date(item.at) }),
      })),
    );
    // One metric update per status, not per item: labelled updates cost a hash of the labels.
    const byStatus = new Map<string, number>();
    for (const result of results)
      byStatus.set(result.status, (byStatus.get(result.status) ?? 0) + 1);
    for (const [status, count] of byStatus) metrics.increments.inc({ status }, count);
    return {
      results: results.map((result, i) => resultBody(nameOf(items[i]?.counter ?? ''), result)),
    };
  });

  app.post<{
    Params: { counter: string };
    Body: { by?: number; idempotencyKey?: string; limit?: number } | undefined;
  }>(
    '/v1/counters/:counter/increment',
    {
      schema: incrementOneSchema,
      // A POST without a body increments by 1. (Fastify itself answers 415 to a body sent
      // without a content type, so an undefined body here really is no body.)
      preValidation: (request, _reply, done) => {
        // Only a missing body defaults; a JSON `null` goes on to validation and is refused.
        if (request.body === undefined) request.body = {};
        done();
      },
    },
    async (request) => {
      const { counter } = request.params;
      const body = request.body ?? {};
      // incr, not incrMany: its errors name the counter, not "item 0" of a batch.
      const result = await tally
        .incr(counter, body.by ?? 1, {
          ...(body.idempotencyKey === undefined ? {} : { idempotencyKey: body.idempotencyKey }),
          ...(body.limit === undefined ? {} : { limit: body.limit }),
        })
        .catch((error: unknown) => {
          if (error instanceof OverflowError) metrics.increments.inc({ status: 'overflow' });
          throw error;
        });
      metrics.increments.inc({ status: result.status });
      if (result.status === 'over-limit') {
        throw new TallyError('OVER_LIMIT', `${counter} would pass its limit of ${result.limit}.`, {
          details: { counter, value: result.value, limit: result.limit },
        });
      }
      return resultBody(counter, result);
    },
  );

  app.get<{ Params: { counter: string } }>(
    '/v1/counters/:counter',
    { schema: readOneSchema },
    async (request) => ({
      counter: request.params.counter,
      value: await tally.get(request.params.counter),
    }),
  );

  // '::' escapes the colon: the path is literally /v1/counters:read.
  app.post<{ Body: { counters: CounterRef[] } }>(
    '/v1/counters::read',
    { schema: readManySchema(maxBatch) },
    async (request) => {
      const { counters } = request.body;
      const values = await tally.getMany(counters);
      return {
        values: Object.fromEntries(counters.map((ref, i) => [nameOf(ref), values[i]])),
      };
    },
  );

  app.get<{
    Params: { counter: string };
    Querystring: { from: string; to: string; granularity: 'minute' | 'hour' | 'day' | 'month' };
  }>('/v1/counters/:counter/usage', { schema: usageSchema(tally.buckets) }, async (request) => {
    const { from, to, granularity } = request.query;
    const buckets = await tally.usage(request.params.counter, {
      from: new Date(from),
      to: new Date(to),
      granularity,
    });
    return {
      counter: request.params.counter,
      granularity,
      buckets: buckets.map((bucket) => ({
        start: bucket.start.toISOString(),
        value: bucket.value,
      })),
    };
  });

  // The open routes: probes, scrapers and the API's description answer without a token.
  const open = { schema: { hide: true }, config: { open: true } };
  app.get('/healthz', open, (_request, reply) => reply.send({ status: 'ok' }));
  // Anyone may call it: one computation a second at most, shared by every caller.
  const readiness = sharedFor(1_000, () => tally.readiness());
  app.get('/readyz', open, async (request, reply) => {
    const found = await readiness();
    // Not ready on a Redis whose settings became unsafe while running (a live CONFIG SET, a
    // failover): traffic should go where counts stay exact.
    const ready =
      found.redis &&
      found.postgres &&
      found.shardsBuilt === found.shards &&
      tally.durability.accepted;
    // Versions and settings help an attacker: without a valid token a probe learns only whether
    // to send traffic here.
    if (!isAuthenticated(request, tokens)) return reply.status(ready ? 200 : 503).send({ ready });
    return reply.status(ready ? 200 : 503).send({
      ready,
      redis: found.redis,
      postgres: found.postgres,
      shardsReconciled: `${found.shardsBuilt}/${found.shards}`,
      durability: tally.durability,
    });
  });
  app.get('/metrics', open, async (_request, reply) =>
    reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()),
  );
  app.get('/openapi.json', open, (_request, reply) => reply.send(app.swagger()));

  declared.answerOtherMethods();
  await app.ready();
  return app;
}
