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
  /** An export whose client takes nothing for this long is cut off (its slot and snapshot freed). */
  exportIdleTimeoutMs: number;
}

/**
 * Whether the client prefers CSV: `text/csv` at a higher quality than JSON (`application/json`,
 * `application/*` or `*\/*`). No Accept header, or JSON preferred or tied: JSON.
 */
function wantsCsv(request: FastifyRequest): boolean {
  let csv = 0;
  let json = 0;
  for (const range of (request.headers.accept ?? '').split(',')) {
    const [type = '', ...parameters] = range.split(';').map((part) => part.trim().toLowerCase());
    const q = parameters.find((parameter) => parameter.startsWith('q='));
    const quality = q === undefined ? 1 : Number(q.slice(2));
    if (!Number.isFinite(quality)) continue;
    if (type === 'text/csv') csv = Math.max(csv, quality);
    if (type === 'application/json' || type === 'application/*' || type === '*/*') {
      json = Math.max(json, quality);
    }
  }
  return csv > 0 && csv > json;
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
 * Passes chunks on, calling `onIdle` when the reader leaves one untaken for `idleMs` (the
 * stream asks for the next chunk only once the client has taken the ones before).
 */
async function* whileTaken(
  chunks: AsyncIterable<string>,
  idleMs: number,
  onIdle: () => void,
): AsyncGenerator<string> {
  for await (const chunk of chunks) {
    const timer = setTimeout(onIdle, idleMs);
    try {
      yield chunk;
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * The usage routes: queries (JSON pages, or CSV streamed), counter listings and label values.
 * Every one reads both stores; `maxConcurrentQueries` bounds how many queries and exports hold
 * a PostgreSQL connection and snapshot at once, so one caller cannot take them all.
 */
export const usageRoutes: FastifyPluginCallbackJsonSchemaToTs<{ Options: UsageRoutesOptions }> = (
  app,
  { tally, maxConcurrentQueries, exportIdleTimeoutMs },
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
      const first = await rows.next().catch(async (error: unknown) => {
        await rows.return(undefined);
        throw error;
      });
      // A client that stops reading would hold the slot, a connection and a snapshot for good:
      // a chunk it has not taken for that long ends the export.
      const csv = whileTaken(usageCsv(query, startingWith(first, rows)), exportIdleTimeoutMs, () =>
        reply.raw.destroy(),
      );
      const body = Readable.from(csv, { objectMode: false });
      // Released when the export ends, fails, or the client goes away.
      body.once('close', release);
      // Fastify pipes the body and destroys it if the response fails.
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
