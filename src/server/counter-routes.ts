import type { FastifyPluginCallbackJsonSchemaToTs } from '@fastify/type-provider-json-schema-to-ts';
import { canonicalName, type CounterRef } from '../counters/counter-name.js';
import type { BatchIncrementResult } from '../engine/increments.js';
import { OverflowError, TallyError } from '../errors.js';
import type { Tally } from '../tally.js';
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
  return { counter, value: result.value, duplicate: result.duplicate, status: result.status };
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
    async (request) => {
      const { counter } = request.params;
      const body = request.body;
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
