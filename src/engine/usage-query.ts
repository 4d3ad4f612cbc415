import { StringDecoder } from 'node:string_decoder';
import { to as copyTo } from 'pg-copy-streams';
import type pg from 'pg';
import { TallyError, ValidationError } from '../errors.js';
import { shardOf } from '../counters/sharding.js';
import { inTime, postgresFailure } from '../store/pool.js';
import { querySql } from '../store/sql.js';
import { checkNotPruned } from '../counters/retention.js';
import { checkOut } from '../store/transaction.js';
import type { EngineContext } from './engine-context.js';
import { reachFaultPoint } from './fault-points.js';
import { ledgerClockMarginMs } from './ledger-pruning.js';
import {
  compareCodePoints,
  counterMatcher,
  counterPattern,
  encodeCursor,
  fieldPattern,
  queryLimits,
  resolveQuery,
  rowIdentities,
  type ResolvedQuery,
  type UsagePage,
  type UsageQueryInput,
  type UsageRow,
  type UsageWindow,
} from './query-spec.js';
import {
  eachUnflushed,
  readBatchStates,
  readUnflushed,
  type BatchState,
  type BatchVerdict,
  type ShardDeltas,
} from './unflushed.js';
import { maxReadAttempts } from './usage.js';

/*
 * Usage queries over many counters, exact: PostgreSQL's buckets of the selected counters, plus
 * every shard's pending deltas, plus its in-flight deltas unless the ledger has the batch.
 *
 * Why it is exact while flushes run: first each shard's snapshot count and in-flight batch are
 * read (R1); then one REPEATABLE READ snapshot of PostgreSQL is taken (S), whose first statement
 * is the ledger's verdict on those batches; then each shard's deltas are read (R2), atomically
 * with a look at what its flushes did since R1. Nothing: the pending deltas of R2 are in no
 * batch, so not in PostgreSQL, and the in-flight batch is the one the ledger judged, unchanged
 * (a batch never changes in flight). The judged batch acknowledged (it was applied at S):
 * likewise. That, and one snapshot since, its batch still in flight: its deltas are read too,
 * and S's ledger is asked about it. Anything more: the query starts over. The long part —
 * summing the buckets — runs after R2, inside S, so a query that takes seconds is not retried
 * because flushes ran meanwhile, and one flush between R1 and R2 costs a statement, not a retry.
 *
 * Which counters R2 reads: those PostgreSQL's snapshot has (counter_labels), and those created
 * in Redis since (the shard's new and orphan counters, see increment.lua and acknowledge.lua).
 * A counter in neither was created in a batch applied after S yet acknowledged before R2: not
 * R1's batch (R2 reads it only if it is still there, or if S has it), and not a later one (R2
 * accepts one snapshot since R1 only while its batch is still in flight). So R2 costs the
 * selected counters, not every pending field; a query naming more than `namedCountersAtMost`
 * scans the shard's fields instead.
 */

/**
 * The most counters a query looks up in Redis by name; past it, it scans every pending field.
 * A named lookup costs a hash read per counter and bucket tag; a scan about half that per
 * pending field, of which 100k increments/s over 100k tenants keep some 20k.
 */
const namedCountersAtMost = 1_000;

/** A group's sums per window, exact. */
interface Group {
  key: string;
  windows: bigint[];
}

/** The index of the window holding `startMs` (boundaries sorted), or -1 outside them all. */
function windowOf(boundaries: readonly number[], startMs: number): number {
  let low = 0;
  let high = boundaries.length - 1;
  if (startMs < (boundaries[0] ?? 0) || startMs >= (boundaries[high] ?? 0)) return -1;
  while (high - low > 1) {
    const middle = (low + high) >> 1;
    if ((boundaries[middle] ?? 0) <= startMs) low = middle;
    else high = middle;
  }
  return low;
}

/** The unflushed deltas of the selected counters, by group and window. */
function unflushedGroups(
  query: ResolvedQuery,
  shards: readonly ShardDeltas[],
): Map<string, bigint[]> {
  const match = counterMatcher(query.selection);
  const keys = new Map<string, string | undefined>();
  const groups = new Map<string, bigint[]>();
  const windows = query.boundaries.length - 1;
  const add = (
    counter: string,
    buckets: { granularities: readonly string[]; starts: readonly number[] },
    delta: string,
  ) => {
    let key = keys.get(counter);
    if (!keys.has(counter)) keys.set(counter, (key = match(counter)));
    if (key === undefined) return;
    // A batch counted under other granularities has no bucket of this one: neither has the store.
    const start = buckets.starts[buckets.granularities.indexOf(query.source)];
    if (start === undefined) return;
    const window = windowOf(query.boundaries, start);
    if (window < 0) return;
    let sums = groups.get(key);
    if (sums === undefined) groups.set(key, (sums = new Array<bigint>(windows).fill(0n)));
    sums[window] = (sums[window] ?? 0n) + BigInt(delta);
  };
  for (const shard of shards) {
    eachUnflushed(shard.pending, add);
    eachUnflushed(shard.inflight, add);
  }
  return groups;
}

/** A row of querySql.batchVerdicts. */
interface VerdictRow {
  shard: number;
  in_ledger: boolean;
  refused: boolean;
}

/** What the ledger says of an in-flight batch, by shard: absent, it lacks the batch. */
type BatchVerdicts = Map<number, Exclude<BatchVerdict, 'lacked'>>;

function batchVerdicts(rows: readonly VerdictRow[]): BatchVerdicts {
  const verdicts: BatchVerdicts = new Map();
  for (const row of rows) {
    if (row.in_ledger) verdicts.set(row.shard, 'applied');
    else if (row.refused) verdicts.set(row.shard, 'refused');
  }
  return verdicts;
}

/**
 * Opens the query's PostgreSQL snapshot (S), in one round trip: what its ledger says of each
 * shard's in-flight batch (shards absent lack theirs), and the selected counters it has, by
 * shard — undefined when more than `namedCountersAtMost`.
 */
async function openSnapshot(
  ctx: EngineContext,
  client: pg.ClientBase,
  query: ResolvedQuery,
  states: readonly BatchState[],
): Promise<{ verdicts: BatchVerdicts; named: string[][] | undefined }> {
  const statements = querySql.openQuerySnapshot(
    states.filter((state) => state.batchId !== ''),
    ledgerClockMarginMs,
    query.selection,
    namedCountersAtMost + 1,
    query.source,
  );
  // Several statements in one simple query: node-postgres answers with one result each.
  const [, , ledger, names, horizon] = (await client.query(statements)) as unknown as [
    pg.QueryResult,
    pg.QueryResult,
    pg.QueryResult<VerdictRow>,
    pg.QueryResult<{ name: string }>,
    pg.QueryResult<{ ms: string }>,
  ];
  const prunedBefore = horizon.rows[0]?.ms;
  checkNotPruned(
    query.source,
    query.boundaries[0] ?? 0,
    prunedBefore === undefined ? undefined : Number(prunedBefore),
  );
  const verdicts = batchVerdicts(ledger.rows);
  if (names.rows.length > namedCountersAtMost) return { verdicts, named: undefined };
  const named = Array.from({ length: ctx.config.shards }, (): string[] => []);
  for (const { name } of names.rows) named[shardOf(name, ctx.config.shards)]?.push(name);
  return { verdicts, named };
}

/**
 * A batch snapshotted between R1 and R2 (one flush of that shard ran meanwhile): its deltas
 * are in Redis' reply, and count unless the query's snapshot has it — asked now, in the same
 * snapshot, rather than starting the query over.
 */
async function dropAppliedNewBatches(client: pg.ClientBase, shards: ShardDeltas[]): Promise<void> {
  const fresh = shards.flatMap((shard) =>
    shard.newBatch === undefined ? [] : [{ shard: shard.shard, ...shard.newBatch }],
  );
  if (fresh.length === 0) return;
  const { rows } = await client.query<VerdictRow>(
    querySql.batchVerdicts(fresh, ledgerClockMarginMs),
  );
  for (const shard of batchVerdicts(rows).keys()) {
    const deltas = shards.find((candidate) => candidate.shard === shard);
    if (deltas !== undefined) deltas.inflight = [];
  }
}

/** A field of COPY's text format as written: backslash escapes undone. */
const copyEscapes: Record<string, string> = {
  b: '\b',
  f: '\f',
  n: '\n',
  r: '\r',
  t: '\t',
  v: '\v',
};
const unescapeCopy = (field: string) =>
  field.includes('\\') ? field.replace(/\\(.)/gs, (_, c: string) => copyEscapes[c] ?? c) : field;

/**
 * The chunks of a stream, failing when one takes longer than `timeoutMs` to arrive. Only the
 * wait for the stream counts, not the time the consumer spends between chunks: a slow reader
 * is the reader's business (the HTTP API bounds its own), a silent PostgreSQL is ours.
 */
async function* withinTimeout<T>(
  stream: AsyncIterable<T>,
  timeoutMs: number,
  what: string,
): AsyncGenerator<T> {
  const iterator = stream[Symbol.asyncIterator]();
  try {
    for (;;) {
      const next = await inTime(iterator.next(), timeoutMs, what);
      if (next.done === true) return;
      yield next.value;
    }
  } finally {
    await iterator.return?.();
  }
}

/**
 * The lines of a COPY TO stream, a chunk's worth at a time (one await per chunk, not per line),
 * whatever its chunks cut through (a line, a UTF-8 character).
 */
async function* copyLines(stream: AsyncIterable<Buffer>): AsyncGenerator<string[]> {
  const decoder = new StringDecoder('utf8');
  let rest = '';
  for await (const chunk of stream) {
    const lines = (rest + decoder.write(chunk)).split('\n');
    rest = lines.pop() ?? '';
    yield lines;
  }
  rest += decoder.end();
  if (rest !== '') yield [rest];
}

/**
 * PostgreSQL's groups, in the query's group order, streamed (COPY: see querySql.windows) in
 * batches; at most `groups` of them when given.
 */
async function* flushedGroups(
  ctx: EngineContext,
  client: pg.ClientBase,
  query: ResolvedQuery,
  groups: number | undefined,
): AsyncGenerator<Group[]> {
  const byGroup = query.orderBy === 'group';
  const stream = client.query(
    copyTo(
      querySql.windows(query.selection, query.source, query.boundaries, {
        descending: query.descending && byGroup,
        after: byGroup ? query.after?.key : undefined,
        groups,
      }),
    ),
  );
  const windows = query.boundaries.length - 1;
  let current: Group | undefined;
  const timeoutMs = ctx.config.queryTimeoutMs;
  for await (const lines of copyLines(withinTimeout(stream, timeoutMs, 'a usage query'))) {
    const done: Group[] = [];
    for (const line of lines) {
      const first = line.indexOf('\t');
      const second = line.indexOf('\t', first + 1);
      const key = unescapeCopy(line.slice(0, first));
      const window = line.slice(first + 1, second);
      const value = line.slice(second + 1);
      if (current?.key !== key) {
        if (current !== undefined) done.push(current);
        current = { key, windows: new Array<bigint>(windows).fill(0n) };
      }
      current.windows[Number(window)] = BigInt(value);
    }
    // The group still open may go on in the next chunk.
    if (done.length > 0) yield done;
  }
  if (current !== undefined) yield [current];
}

/**
 * Merges PostgreSQL's groups with the unflushed ones, in group order, batch by batch: a group
 * in both gets the sum of both, window by window.
 */
async function* mergedGroups(
  flushed: AsyncGenerator<Group[]>,
  unflushed: Map<string, bigint[]>,
  query: ResolvedQuery,
): AsyncGenerator<Group[]> {
  const direction = query.descending && query.orderBy === 'group' ? -1 : 1;
  const compare = (a: string, b: string) => direction * compareCodePoints(a, b);
  const after = query.orderBy === 'group' ? query.after?.key : undefined;
  const pending = [...unflushed.keys()]
    .filter((key) => after === undefined || compare(key, after) > 0)
    .sort(compare);
  let next = 0;
  const unflushedGroup = (key: string): Group => ({ key, windows: unflushed.get(key) ?? [] });
  for await (const batch of flushed) {
    const merged: Group[] = [];
    for (const group of batch) {
      for (; next < pending.length && compare(pending[next] ?? '', group.key) < 0; next++) {
        merged.push(unflushedGroup(pending[next] ?? ''));
      }
      if (pending[next] === group.key) {
        const extra = unflushed.get(group.key) ?? [];
        group.windows = group.windows.map((value, i) => value + (extra[i] ?? 0n));
        next++;
      }
      merged.push(group);
    }
    yield merged;
  }
  yield pending.slice(next).map(unflushedGroup);
}

/**
 * Every group of the query, exact, in group order from its cursor on (at most `groups` of
 * PostgreSQL's when given), holding one PostgreSQL snapshot and its client until the caller
 * stops iterating. A caller that stops before the end (a client gone mid-export) leaves COPY
 * unfinished: that connection is closed, not reused.
 */
async function* exactGroups(
  ctx: EngineContext,
  query: ResolvedQuery,
  groups?: number,
): AsyncGenerator<Group[]> {
  const what = 'a usage query';
  const timeoutMs = ctx.config.queryTimeoutMs;
  // PostgreSQL first: with it down, a query fails before it reads Redis.
  const { client, release } = await checkOut(ctx.pool).catch((error: unknown) => {
    throw postgresFailure(error, what);
  });
  let failure: Error | undefined;
  let finished = false;
  try {
    for (let attempt = 0; attempt < maxReadAttempts; attempt++) {
      const states = await readBatchStates(ctx, '', what);
      await reachFaultPoint('query-before-snapshot');
      let snapshot: Awaited<ReturnType<typeof openSnapshot>>;
      try {
        snapshot = await inTime(openSnapshot(ctx, client, query, states), timeoutMs, what);
      } catch (error) {
        throw postgresFailure(error, what);
      }
      const { verdicts, named } = snapshot;
      await reachFaultPoint('query-after-snapshot');
      const shards = await readUnflushed(
        ctx,
        states,
        {
          verdicts,
          pattern:
            named === undefined ? fieldPattern(query.selection) : counterPattern(query.selection),
          counters: named,
        },
        what,
      );
      if (shards === undefined) {
        await inTime(client.query('ROLLBACK'), timeoutMs, what).catch((error: unknown) => {
          throw postgresFailure(error, what);
        });
        continue;
      }
      await inTime(dropAppliedNewBatches(client, shards), timeoutMs, what).catch(
        (error: unknown) => {
          throw postgresFailure(error, what);
        },
      );
      const flushed = flushedGroups(ctx, client, query, groups);
      try {
        yield* mergedGroups(flushed, unflushedGroups(query, shards), query);
      } catch (error) {
        throw error instanceof TallyError ? error : postgresFailure(error, what);
      }
      finished = true;
      return;
    }
    throw new TallyError(
      'UNAVAILABLE',
      `A usage query found flushes moving deltas under ${maxReadAttempts} reads in a row.`,
    );
  } catch (error) {
    failure = error instanceof Error ? error : new Error(String(error));
    throw error;
  } finally {
    if (!finished) failure ??= new Error('a usage query stopped mid-stream');
    // Read only: nothing to keep. A client that failed, or stopped mid-COPY, is not reused.
    // The caller has every row by now, so the ROLLBACK's round trip is not waited for: the
    // client goes back to the pool once it is done, or is closed if PostgreSQL falls silent.
    if (failure === undefined) {
      inTime(client.query('ROLLBACK'), timeoutMs, what).then(
        () => {
          release();
        },
        (error: unknown) => {
          release(error instanceof Error ? error : new Error(String(error)));
        },
      );
    } else release(failure);
  }
}

/** A group's usage past ±(2^53−1), which a number cannot hold exactly. */
function overflow(identity: Pick<UsageRow, 'counter' | 'labels'>, where: string): TallyError {
  return new TallyError(
    'OVERFLOW',
    `Usage of a group (${JSON.stringify(identity)}) ${where} is past ±(2^53−1) and cannot be ` +
      'returned exactly: ask for finer windows.',
  );
}

/**
 * Builds a query's rows from its groups: labels, windows as numbers (refusing any past
 * ±(2^53−1)). What is the same for every row is worked out once: an export builds a million.
 */
function rowBuilder(query: ResolvedQuery): (group: Group) => UsageRow {
  const identityOf = rowIdentities(query.selection);
  const starts = query.boundaries.slice(0, -1);
  return (group) => {
    const buckets = new Array<UsageWindow>(starts.length);
    let total = 0n;
    for (let i = 0; i < starts.length; i++) {
      const exact = group.windows[i] ?? 0n;
      const start = starts[i] ?? 0;
      const value = Number(exact);
      if (!Number.isSafeInteger(value)) {
        throw overflow(identityOf(group.key), `in the window at ${new Date(start).toISOString()}`);
      }
      total += exact;
      buckets[i] = { start: new Date(start), value };
    }
    const value = Number(total);
    if (!Number.isSafeInteger(value)) throw overflow(identityOf(group.key), 'in the period');
    const { counter, labels } = identityOf(group.key);
    return counter === undefined ? { labels, value, buckets } : { counter, labels, value, buckets };
  };
}

/** The value order: by value (up or down), then by group key. */
function valueOrder(query: ResolvedQuery) {
  const sign = query.descending ? -1 : 1;
  return (a: { value: bigint; key: string }, b: { value: bigint; key: string }) =>
    a.value === b.value ? compareCodePoints(a.key, b.key) : a.value < b.value ? -sign : sign;
}

/** One page ordered by value: every group is summed, the page's are kept. */
async function pageByValue(ctx: EngineContext, query: ResolvedQuery): Promise<UsagePage> {
  const order = valueOrder(query);
  const after = query.after;
  const afterPosition =
    after === undefined ? undefined : { key: after.key, value: BigInt(after.value ?? '0') };
  let kept: (Group & { value: bigint })[] = [];
  const windows = query.boundaries.length - 1;
  const trimAt = Math.max(4 * (query.limit + 1), Math.floor(queryLimits.maxCells / windows));
  for await (const batch of exactGroups(ctx, query)) {
    for (const group of batch) {
      const ranked = { ...group, value: group.windows.reduce((sum, value) => sum + value, 0n) };
      if (afterPosition !== undefined && order(ranked, afterPosition) <= 0) continue;
      kept.push(ranked);
    }
    // Sorting now and then keeps memory at a few pages' worth, whatever the group count: four
    // pages, or as many groups as the cells of one page allow when that is more.
    if (kept.length >= trimAt) kept = kept.sort(order).slice(0, query.limit + 1);
  }
  kept.sort(order);
  const page = kept.slice(0, query.limit);
  const last = page.at(-1);
  return {
    rows: page.map(rowBuilder(query)),
    nextCursor:
      kept.length > query.limit && last !== undefined
        ? encodeCursor(query, { key: last.key, value: last.value.toString() })
        : null,
  };
}

/** One page of a usage query (library: Tally.query). */
export async function queryUsage(ctx: EngineContext, input: UsageQueryInput): Promise<UsagePage> {
  const query = resolveQuery(input, ctx.config, 'page');
  if (query.orderBy === 'value') return pageByValue(ctx, query);
  const toRow = rowBuilder(query);
  const rows: UsageRow[] = [];
  let lastKey = '';
  let more = false;
  // PostgreSQL sends one group past the page, and Redis' groups are few: read to the end, so
  // the connection is left clean.
  for await (const batch of exactGroups(ctx, query, query.limit + 1)) {
    for (const group of batch) {
      if (rows.length === query.limit) {
        more = true;
        continue;
      }
      rows.push(toRow(group));
      lastKey = group.key;
    }
  }
  return { rows, nextCursor: more ? encodeCursor(query, { key: lastKey }) : null };
}

/**
 * Every row of a usage query from its cursor on, in group order, streamed: PostgreSQL's rows
 * arrive as the consumer takes them (library: Tally.queryStream; CSV exports). `limit`, when
 * given, stops it after that many groups.
 */
export async function* streamUsage(
  ctx: EngineContext,
  input: UsageQueryInput,
): AsyncGenerator<UsageRow> {
  const query = resolveQuery(input, ctx.config, 'stream');
  if (query.orderBy === 'value') {
    throw new ValidationError('A stream is in group order; ask query() for the top rows by value.');
  }
  const groups = input.limit === undefined ? undefined : query.limit;
  const toRow = rowBuilder(query);
  let rows = 0;
  for await (const batch of exactGroups(ctx, query, groups)) {
    for (const group of batch) {
      if (groups !== undefined && rows++ >= groups) continue; // read to the end (as above)
      yield toRow(group);
    }
  }
}
