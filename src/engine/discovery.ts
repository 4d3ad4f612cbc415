import { parseCounterName, validateName } from '../counters/counter-name.js';
import { ValidationError } from '../errors.js';
import { inTime, postgresFailure } from '../store/pool.js';
import type pg from 'pg';
import { querySql } from '../store/sql.js';
import { inTransaction, withClient } from '../store/transaction.js';
import type { EngineContext } from './engine-context.js';
import {
  compareCodePoints,
  counterMatcher,
  counterPattern,
  labelOf,
  queryLimits,
  resolveSelection,
  type CounterSelection,
  type Selection,
} from './query-spec.js';
import { readBatchStates } from './unflushed.js';

/*
 * Which counters and label values exist: the store's (tally.counter_labels), and the ones that
 * have only reached Redis so far, so that a counter a usage query counts is also listed.
 */

export interface ListCountersInput extends CounterSelection {
  /** Names per page: default 100, at most 10,000. */
  limit?: number;
  cursor?: string;
}

export interface CounterListing {
  counters: { name: string; labels: Record<string, string> }[];
  nextCursor: string | null;
}

export interface LabelValuesOptions {
  /** Only values starting with this. */
  prefix?: string;
  /** Only counters with these labels (as in a query). */
  where?: CounterSelection['where'];
  limit?: number;
  cursor?: string;
}

export interface LabelValues {
  values: string[];
  nextCursor: string | null;
}

function pageLimit(limit: unknown): number {
  const value = limit ?? queryLimits.defaultGroups;
  if (
    typeof value !== 'number' ||
    !Number.isSafeInteger(value) ||
    value < 1 ||
    value > queryLimits.maxGroups
  ) {
    throw new ValidationError(`limit must be a whole number from 1 to ${queryLimits.maxGroups}.`);
  }
  return value;
}

const encode = (last: string) => Buffer.from(JSON.stringify({ after: last })).toString('base64url');

function decode(cursor: unknown): string | undefined {
  if (cursor === undefined) return undefined;
  if (typeof cursor === 'string' && cursor.length <= queryLimits.maxCursorLength) {
    try {
      const { after } = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as {
        after?: unknown;
      };
      // Compared with names, which hold no NUL (PostgreSQL text cannot).
      if (typeof after === 'string' && !after.includes('\u0000') && after.isWellFormed()) {
        return after;
      }
    } catch {
      // refused below
    }
  }
  throw new ValidationError('cursor is not a nextCursor this listing returned; start without one.');
}

/** The first `limit` of both sources past `after`, in byte order, and whether more follow. */
function mergePage(
  stored: readonly string[],
  unflushed: Iterable<string>,
  after: string | undefined,
  limit: number,
): { page: string[]; nextCursor: string | null } {
  const all = [...new Set([...stored, ...unflushed])]
    .filter((value) => after === undefined || compareCodePoints(value, after) > 0)
    .sort(compareCodePoints);
  const page = all.slice(0, limit);
  const last = page.at(-1);
  // `stored` holds up to limit + 1 rows, so a longer union means a next page exists.
  return { page, nextCursor: all.length > limit && last !== undefined ? encode(last) : null };
}

/**
 * One listing statement's rows, under the query timeout: PostgreSQL's statement timeout for a
 * slow statement, and `inTime` for a server gone silent (the client is then closed).
 */
function storeRows<Row extends pg.QueryResultRow>(
  ctx: EngineContext,
  statement: { text: string; values: unknown[] },
  what: string,
): Promise<Row[]> {
  const timeoutMs = ctx.config.queryTimeoutMs;
  return withClient(ctx.pool, (client) =>
    inTime(
      inTransaction(client, async () => {
        await client.query(querySql.statementTimeout, [String(timeoutMs)]);
        return (await client.query<Row>(statement)).rows;
      }),
      timeoutMs,
      what,
    ),
  ).catch((error: unknown) => {
    throw postgresFailure(error, what);
  });
}

/**
 * The selected counters created in Redis since the last applied batch of their shard (maybe in
 * PostgreSQL already too). Read before PostgreSQL: a counter not among them was in PostgreSQL
 * before this read, so the two together miss none.
 */
async function newCounters(
  ctx: EngineContext,
  selection: Selection,
  what: string,
): Promise<Set<string>> {
  const match = counterMatcher(selection);
  const found = new Set<string>();
  for (const shard of await readBatchStates(ctx, counterPattern(selection), what)) {
    for (const counter of shard.newCounters) {
      if (match(counter) !== undefined) found.add(counter);
    }
  }
  return found;
}

/** How many names one listing statement of selectedCounterNames reads. */
const namesPerStatement = 10_000;

/**
 * Every counter a selection takes, the store's and those only in Redis so far, in byte order
 * (a counter deletion reads them all: engine/deletion.ts).
 */
export async function selectedCounterNames(
  ctx: EngineContext,
  selection: Selection,
  what: string,
): Promise<string[]> {
  const names = await newCounters(ctx, selection, what);
  for (let after: string | undefined; ;) {
    const rows = await storeRows<{ name: string }>(
      ctx,
      querySql.counterNames(selection, after, namesPerStatement),
      what,
    );
    for (const row of rows) names.add(row.name);
    after = rows.at(-1)?.name;
    if (rows.length < namesPerStatement) break;
  }
  return [...names].sort(compareCodePoints);
}

/** Counters by base name and labels, or plain names by prefix, a page at a time. */
export async function listCounters(
  ctx: EngineContext,
  input: ListCountersInput,
): Promise<CounterListing> {
  const selection = resolveSelection(input, undefined);
  const limit = pageLimit(input.limit);
  const after = decode(input.cursor);
  const what = 'a counter listing';
  const unflushed = await newCounters(ctx, selection, what);
  const rows = await storeRows<{ name: string }>(
    ctx,
    querySql.counterNames(selection, after, limit + 1),
    what,
  );
  const { page, nextCursor } = mergePage(
    rows.map((row) => row.name),
    unflushed,
    after,
    limit,
  );
  return {
    counters: page.map((name) => ({ name, labels: parseCounterName(name).labels ?? {} })),
    nextCursor,
  };
}

/** The values one label takes among a base name's counters, a page at a time. */
export async function labelValues(
  ctx: EngineContext,
  counter: string,
  label: string,
  options: LabelValuesOptions = {},
): Promise<LabelValues> {
  const selection = resolveSelection(
    { counter, ...(options.where === undefined ? {} : { where: options.where }) },
    [label],
  );
  if (selection.kind !== 'labelled') throw new Error('unreachable: a base name was given');
  const prefix = options.prefix ?? '';
  if (prefix !== '') validateName(prefix, 'A prefix');
  const limit = pageLimit(options.limit);
  const after = decode(options.cursor);
  const what = 'a label listing';
  const unflushed = new Set<string>();
  for (const name of await newCounters(ctx, selection, what)) {
    const labels = parseCounterName(name).labels;
    const value = labels === undefined ? undefined : labelOf(labels, label);
    if (value !== undefined && value.startsWith(prefix)) unflushed.add(value);
  }
  const rows = await storeRows<{ value: string }>(
    ctx,
    querySql.labelValues(selection, label, { prefix, after, limit: limit + 1 }),
    what,
  );
  const { page, nextCursor } = mergePage(
    rows.map((row) => row.value),
    unflushed,
    after,
    limit,
  );
  return { values: page, nextCursor };
}
