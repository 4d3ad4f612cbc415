import { Readable } from 'node:stream';
import type { FastifyPluginCallbackJsonSchemaToTs } from '@fastify/type-provider-json-schema-to-ts';
import type { FastifyReply, FastifyRequest } from 'fastify';
import {
  groupByOf,
  whereOf,
  type UsagePage,
  type UsageQueryInput,
  type UsageRow,
} from '../engine/query-spec.js';
import { TallyError } from '../errors.js';
import { usageCsv } from '../export/usage-output.js';
import type { Tally } from '../tally.js';
import {
  counterListSchema,
  labelValuesSchema,
  usageLinkSchema,
  usageQuerySchema,
} from './schemas.js';

export interface UsageRoutesOptions {
  tally: Tally;
  /** Usage queries and exports running at once; more are answered 503 (BUSY). */
  maxConcurrentQueries: number;
}

/** Whether the client asked for CSV (Accept: text/csv, not refused with q=0). */
function wantsCsv(request: FastifyRequest): boolean {
  const accept = request.headers.accept ?? '';
  return accept
    .split(',')
    .some(
      (range) => /^\s*text\/csv\s*(;|$)/i.test(range) && !/;\s*q=0(\.0*)?\s*(;|$)/i.test(range),
    );
}

const limitOf = (raw: string) => Number(raw);

/** A page as JSON: dates as ISO 8601. */
function pageBody(page: UsagePage) {
  return {
    rows: page.rows.map((row) => ({
      ...row,
      buckets: row.buckets.map((bucket) => ({
        start: bucket.start.toISOString(),
        value: bucket.value,
      })),
    })),
    nextCursor: page.nextCursor,
  };
}

/** The rows of `rows` with `first` (already read) in front. */
async function* startingWith(
  first: IteratorResult<UsageRow>,
  rows: AsyncGenerator<UsageRow>,
): AsyncGenerator<UsageRow> {
  if (first.done === true) return;
  yield first.value;
  yield* rows;
}

/**
 * The usage routes: queries (JSON pages, or CSV streamed), counter listings and label values.
 * Every one reads both stores; `maxConcurrentQueries` bounds how many queries and exports hold
 * a PostgreSQL connection and snapshot at once, so one caller cannot take them all.
 */
export const usageRoutes: FastifyPluginCallbackJsonSchemaToTs<{ Options: UsageRoutesOptions }> = (
  app,
  { tally, maxConcurrentQueries },
  done,
) => {
  let running = 0;
  const admit = () => {
    if (running >= maxConcurrentQueries) {
      throw new TallyError(
        'BUSY',
        `${maxConcurrentQueries} usage queries are running already (TALLY_MAX_CONCURRENT_QUERIES); retry shortly.`,
      );
    }
    running++;
    let released = false;
    return () => {
      if (!released) running--;
      released = true;
    };
  };

  /** Runs `read` admitted, released when it settles. */
  const bounded = async <T>(read: () => Promise<T>): Promise<T> => {
    const release = admit();
    try {
      return await read();
    } finally {
      release();
    }
  };

  const answer = async (request: FastifyRequest, reply: FastifyReply, query: UsageQueryInput) => {
    if (!wantsCsv(request)) return bounded(async () => pageBody(await tally.query(query)));
    const release = admit();
    try {
      const rows = tally.queryStream(query);
      // The first row is read before answering, so that bad input or an unreachable store
      // still answers with its status; after the header, a failure cuts the stream short.
      const first = await rows.next();
      const body = Readable.from(usageCsv(query, startingWith(first, rows)), { objectMode: false });
      // Released when the export ends, fails, or the client goes away.
      body.once('close', release);
      return await reply
        .type('text/csv; charset=utf-8')
        .header('content-disposition', 'attachment; filename="usage.csv"')
        .send(body);
    } catch (error) {
      release();
      throw error;
    }
  };

  // '::' escapes the colon: the path is literally /v1/usage:query.
  app.post('/v1/usage::query', { schema: usageQuerySchema }, (request, reply) =>
    answer(request, reply, request.body as UsageQueryInput),
  );

  app.get('/v1/usage', { schema: usageLinkSchema }, (request, reply) => {
    const { where, groupBy, limit, ...rest } = request.query;
    const query: UsageQueryInput = {
      ...rest,
      ...(where === undefined ? {} : { where: whereOf(where) }),
      ...(groupBy === undefined ? {} : { groupBy: groupByOf(groupBy) }),
      ...(limit === undefined ? {} : { limit: limitOf(limit) }),
    };
    return answer(request, reply, query);
  });

  app.get('/v1/counters', { schema: counterListSchema }, async (request) => {
    const { where, limit, ...rest } = request.query;
    return bounded(async () => ({
      ...(await tally.listCounters({
        ...rest,
        ...(where === undefined ? {} : { where: whereOf(where) }),
        ...(limit === undefined ? {} : { limit: limitOf(limit) }),
      })),
    }));
  });

  app.get('/v1/labels/:label/values', { schema: labelValuesSchema }, async (request) => {
    const { counter, where, limit, ...rest } = request.query;
    return bounded(async () => ({
      ...(await tally.labelValues(counter, request.params.label, {
        ...rest,
        ...(where === undefined ? {} : { where: whereOf(where) }),
        ...(limit === undefined ? {} : { limit: limitOf(limit) }),
      })),
    }));
  });
  done();
};
