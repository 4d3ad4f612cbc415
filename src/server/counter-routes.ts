import type { FastifyPluginCallbackJsonSchemaToTs } from '@fastify/type-provider-json-schema-to-ts';
import { canonicalName, type CounterRef } from '../counters/counter-name.js';
import type { FastifyReply } from 'fastify';
import type { BatchIncrementResult, LimitState } from '../engine/increments.js';
import { OverflowError, TallyError } from '../errors.js';
import type { Tally } from '../tally.js';
import { toHttpError } from './http-errors.js';
import type { HttpMetrics } from './http-metrics.js';
import {
  incrementBatchSchema,
  incrementOneSchema,
  readManySchema,
  readOneSchema,
  usageSchema,
} from './schemas.js';

export interface CounterRoutesOptions {
  tally: Tally;
  maxBatch: number;
  metrics: HttpMetrics;
}

/** How answers name a counter: a plain name as sent (the engine validated it), labels canonical. */
const nameOf = (ref: CounterRef) => (typeof ref === 'string' ? ref : canonicalName(ref));

function resultBody(counter: string, result: BatchIncrementResult) {
  const body = { counter, value: result.value, duplicate: result.duplicate, status: result.status };
  if (result.status === 'overflow' || result.status === 'key-reused') return body;
  return result.usage === undefined ? body : { ...body, ...limitBody(result as LimitState) };
}

/** A limit's state as JSON (dates as ISO 8601). */
function limitBody(state: LimitState) {
  return {
    limit: state.limit,
    usage: state.usage,
    remaining: state.remaining,
    periodStart: state.periodStart?.toISOString() ?? null,
    resetAt: state.resetAt?.toISOString() ?? null,
    limitExceeded: state.limitExceeded,
  };
}

const secondsUntil = (date: Date) => Math.max(0, Math.ceil((date.getTime() - Date.now()) / 1000));

/**
 * The IETF rate-limit header fields (draft-ietf-httpapi-ratelimit-headers-10): the policy (its
 * quota q, and its window w in seconds for a periodic limit, named by the period or "total")
 * and the state (what remains, r, and for a periodic limit the seconds until it resets, t).
 */
function setRateLimitHeaders(reply: FastifyReply, state: LimitState, per: string | undefined) {
  const name = `"${per ?? 'total'}"`;
  const { periodStart, resetAt } = state;
  const window =
    periodStart === null || resetAt === null
      ? ''
      : `;w=${Math.round((resetAt.getTime() - periodStart.getTime()) / 1000)}`;
  void reply.header('RateLimit-Policy', `${name};q=${Math.max(0, state.limit)}${window}`);
  void reply.header(
    'RateLimit',
    `${name};r=${state.remaining}${resetAt === null ? '' : `;t=${secondsUntil(resetAt)}`}`,
  );
}

/**
 * The /v1 routes: increments, reads and usage. Request and reply types come from the JSON
 * schemas (schemas.ts) through the type provider: declared once, validated, documented.
 */
export const counterRoutes: FastifyPluginCallbackJsonSchemaToTs<{
  Options: CounterRoutesOptions;
}> = (app, { tally, maxBatch, metrics }, done) => {
  app.post('/v1/increments', { schema: incrementBatchSchema(maxBatch) }, async (request) => {
    const items = request.body.increments;
    const results = await tally.incrMany(
      items.map((item) => ({
        counter: item.counter,
        by: item.by ?? 1,
        ...(item.idempotencyKey === undefined ? {} : { idempotencyKey: item.idempotencyKey }),
        ...(item.limit === undefined ? {} : { limit: item.limit }),
        ...(item.check === undefined ? {} : { check: item.check }),
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

  app.post(
    '/v1/counters/:counter/increment',
    {
      schema: incrementOneSchema,
      // A POST without a body increments by 1. (Fastify itself answers 415 to a body sent
      // without a content type, so an undefined body here really is no body.)
      preValidation: (request, _reply, done) => {
        // Only a missing body defaults; a JSON `null` goes on to validation and is refused.
        if ((request.body as unknown) === undefined) request.body = {};
        done();
      },
    },
    async (request, reply) => {
      const { counter } = request.params;
      const body = request.body;
      // incr, not incrMany: its errors name the counter, not "item 0" of a batch.
      const result = await tally
        .incr(counter, body.by ?? 1, {
          ...(body.idempotencyKey === undefined ? {} : { idempotencyKey: body.idempotencyKey }),
          ...(body.limit === undefined ? {} : { limit: body.limit }),
          ...(body.check === undefined ? {} : { check: body.check }),
          ...(body.at === undefined ? {} : { at: new Date(body.at) }),
        })
        .catch((error: unknown) => {
          if (error instanceof OverflowError) metrics.increments.inc({ status: 'overflow' });
          throw error;
        });
      metrics.increments.inc({ status: result.status });
      if (result.usage !== undefined) {
        const per = typeof body.limit === 'object' ? body.limit.per : undefined;
        setRateLimitHeaders(reply, result as LimitState, per);
      }
      if (result.status === 'over-limit') {
        const refusal = new TallyError(
          'OVER_LIMIT',
          `${counter} would pass its limit of ${result.limit}.`,
          { details: { counter, value: result.value, ...limitBody(result) } },
        );
        // A refusal no wait can lift is final: 409 whatever was asked (a 429 invites retries).
        // So is a total cap's, and one in a period that has ended (a backdated increment).
        if (
          body.overLimitStatus !== 429 ||
          result.resetAt === null ||
          result.resetAt.getTime() <= Date.now()
        ) {
          throw refusal;
        }
        metrics.errors.inc({ code: refusal.code });
        return reply
          .status(429)
          .header('Retry-After', String(secondsUntil(result.resetAt)))
          .send({ error: { ...toHttpError(refusal).body.error } });
      }
      return resultBody(counter, result);
    },
  );

  app.get('/v1/counters/:counter', { schema: readOneSchema }, async (request) => ({
    counter: request.params.counter,
    value: await tally.get(request.params.counter),
  }));

  // '::' escapes the colon: the path is literally /v1/counters:read.
  app.post('/v1/counters::read', { schema: readManySchema(maxBatch) }, async (request) => {
    const { counters } = request.body;
    const values = await tally.getMany(counters);
    return {
      values: Object.fromEntries(counters.map((ref, i) => [nameOf(ref), values[i] ?? 0])),
    };
  });

  app.get(
    '/v1/counters/:counter/usage',
    { schema: usageSchema(tally.buckets) },
    async (request) => {
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
    },
  );
  done();
};
