import { createHash, timingSafeEqual } from 'node:crypto';
import swagger from '@fastify/swagger';
import Fastify, { LogController } from 'fastify';
import type { Logger } from 'pino';
import { TallyError } from '../errors.js';
import type { BatchIncrementResult } from '../increments.js';
import { packageVersion } from '../package-files.js';
import type { Tally } from '../tally.js';
import { toHttpError } from './http-errors.js';
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
  logger: Logger;
}

/** Compares in constant time, whatever the lengths, by comparing digests. */
function sameSecret(given: string, expected: string): boolean {
  const digest = (value: string) => createHash('sha256').update(value).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

function resultBody(counter: string, result: BatchIncrementResult) {
  return { counter, value: result.value, duplicate: result.duplicate, status: result.status };
}

/** The HTTP API, ready to listen (or to `inject` in tests). */
export async function buildApi(options: ApiOptions) {
  const { tally, tokens } = options;
  const maxBatch = options.maxBatch ?? maxBatchDefault;
  const metrics = new HttpMetrics();
  const app = Fastify({
    loggerInstance: options.logger,
    bodyLimit: options.bodyLimitBytes ?? 1_048_576,
    // Metrics count the traffic; the log keeps failures.
    logController: new LogController({ disableRequestLogging: true }),
    // Requests are taken as they come: no type coercion, no silently dropped fields.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    // A counter name may hold '/', sent percent-encoded; route on the raw path, decode params.
    routerOptions: { ignoreDuplicateSlashes: false },
  });

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
  });

  app.setErrorHandler((error, request, reply) => {
    const { status, body } = toHttpError(error);
    if (status >= 500) request.log.error({ err: error }, 'request failed');
    metrics.errors.inc({ code: body.error.code });
    if (status === 401) void reply.header('www-authenticate', 'Bearer');
    return reply.status(status).send(body);
  });
  app.setNotFoundHandler((request, reply) => {
    metrics.errors.inc({ code: 'NOT_FOUND' });
    return reply.status(404).send({
      error: { code: 'NOT_FOUND', message: `No route ${request.method} ${request.url}.` },
    });
  });

  app.addHook('onRequest', (request, _reply, done) => {
    if (tokens.length === 0 || !request.url.startsWith('/v1/')) {
      done();
      return;
    }
    const header = request.headers.authorization ?? '';
    const given = header.startsWith('Bearer ') ? header.slice('Bearer '.length) : '';
    // Every token is compared, so the time taken does not tell which one nearly matched.
    const accepted = tokens.map((token) => sameSecret(given, token)).includes(true);
    done(accepted ? undefined : Object.assign(new Error('unauthorized'), { statusCode: 401 }));
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
        counter: string;
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
    return { results: results.map((result, i) => resultBody(items[i]?.counter ?? '', result)) };
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
      const [result] = await tally.incrMany([
        {
          counter,
          by: body.by ?? 1,
          ...(body.idempotencyKey === undefined ? {} : { idempotencyKey: body.idempotencyKey }),
          ...(body.limit === undefined ? {} : { limit: body.limit }),
        },
      ]);
      if (result === undefined) throw new Error('incrMany returned no result');
      metrics.increments.inc({ status: result.status });
      if (result.status === 'over-limit') {
        throw new TallyError('OVER_LIMIT', `${counter} would pass its limit of ${result.limit}.`, {
          details: { counter, value: result.value, limit: result.limit },
        });
      }
      if (result.status === 'overflow') {
        throw new TallyError('OVERFLOW', `${counter} would leave ±(2^53−1); nothing changed.`, {
          details: { counter, value: result.value },
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
  app.post<{ Body: { counters: string[] } }>(
    '/v1/counters::read',
    { schema: readManySchema(maxBatch) },
    async (request) => {
      const { counters } = request.body;
      const values = await tally.getMany(counters);
      return { values: Object.fromEntries(counters.map((name, i) => [name, values[i]])) };
    },
  );

  app.get<{
    Params: { counter: string };
    Querystring: { from: string; to: string; granularity: 'minute' | 'hour' | 'day' | 'month' };
  }>('/v1/counters/:counter/usage', { schema: usageSchema }, async (request) => {
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

  const hidden = { schema: { hide: true } };
  app.get('/healthz', hidden, (_request, reply) => reply.send({ status: 'ok' }));
  app.get('/readyz', hidden, async (_request, reply) => {
    const [connections, status] = await Promise.all([
      tally.ping(),
      tally.status().catch(() => undefined),
    ]);
    const shardsReady = status?.shards.filter((shard) => shard.totalsValid).length ?? 0;
    const ready =
      connections.redis && connections.postgres && shardsReady === status?.shards.length;
    return reply.status(ready ? 200 : 503).send({
      ready,
      redis: connections.redis,
      postgres: connections.postgres,
      shardsReconciled: `${shardsReady}/${status?.shards.length ?? '?'}`,
      durability: tally.durability,
    });
  });
  app.get('/metrics', hidden, async (_request, reply) =>
    reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()),
  );
  app.get('/openapi.json', hidden, (_request, reply) => reply.send(app.swagger()));

  await app.ready();
  return app;
}
