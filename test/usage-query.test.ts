/**
 * Usage queries against a model (fast-check): random labelled increments at instants around
 * DST changes, month ends and a leap day; flushes, flushing processes killed at every crash
 * point, and flushes running during a query; every query (random where, groupBy, granularity,
 * time zone, page size, order) equals what the model computes from the increments alone, with
 * its own calendar arithmetic (Intl), not Tally's.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canonicalName } from '../src/counters/counter-name.js';
import type { FaultPoint } from '../src/engine/fault-points.js';
import { compareCodePoints, groupKey } from '../src/engine/query-spec.js';
import { shardKeys } from '../src/redis/shard-keys.js';
import {
  createTally,
  migrate,
  type Granularity,
  type Tally,
  type UsageQueryInput,
  type UsageRow,
} from '../src/index.js';
import { runTypeScript } from './support/child-process.js';
import { createDatabase, startRedis, waitFor, type RedisHandle } from './support/index.js';
import { commandCalls } from './support/redis-stats.js';
import { anyDate } from './support/tally-store.js';

const flushOnce = new URL('./fixtures/flush-once.ts', import.meta.url);

interface Increment {
  counter: string;
  labels: Record<string, string> | undefined;
  at: number;
  by: number;
}

interface Real {
  tally: Tally;
  options: Record<string, unknown>;
}

type Model = Increment[];

const tenants = ['acme', 'globex', 'Ünïcode', 'z\u{1f600}', 'a"b\\c', 'ﬀ'];
const regions = ['eu', 'us'];
const zones = ['UTC', 'Europe/Berlin', 'America/New_York', 'Asia/Kolkata'];

const at = (iso: string) => Date.parse(iso);
/** Instants either side of the calendar's traps. */
const nearBoundaries = [
  // Berlin: 2026-03-29 has 23 hours, 2026-10-25 has 25.
  '2026-03-28T22:59:59.999Z',
  '2026-03-28T23:00:00Z',
  '2026-03-29T00:59:59.999Z',
  '2026-03-29T01:00:00Z',
  '2026-03-29T21:59:59.999Z',
  '2026-03-29T22:00:00Z',
  '2026-10-24T22:00:00Z',
  '2026-10-25T00:30:00Z',
  '2026-10-25T01:30:00Z',
  '2026-10-25T22:59:59.999Z',
  '2026-10-25T23:00:00Z',
  // New York: 2026-03-08 and 2026-11-01 (01:30 happens twice).
  '2026-03-08T06:59:00Z',
  '2026-03-08T07:00:00Z',
  '2026-11-01T04:00:00Z',
  '2026-11-01T05:30:00Z',
  '2026-11-01T06:30:00Z',
  '2026-11-02T04:59:00Z',
  // Month ends, in UTC and Kolkata (+05:30).
  '2026-11-30T18:29:59.999Z',
  '2026-11-30T18:30:00Z',
  '2026-11-30T23:59:59.999Z',
  '2026-12-01T00:00:00Z',
  '2026-03-31T23:59:00Z',
  '2026-10-31T23:30:00Z',
  // The leap day.
  '2024-02-28T23:59:59.999Z',
  '2024-02-29T00:00:00Z',
  '2024-02-29T23:59:00Z',
  '2024-03-01T00:00:00Z',
].map(at);

/** Periods, as dates on the query's zone's calendar. */
const longPeriods: [string, string][] = [
  ['2026-03-01', '2026-04-01'],
  ['2026-10-01', '2026-12-02'],
  ['2024-02-01', '2024-03-02'],
  ['2024-01-01', '2027-01-01'],
];
const shortPeriods: [string, string][] = [
  ['2026-03-29', '2026-03-30'],
  ['2026-10-25', '2026-10-27'],
  ['2026-11-01', '2026-11-02'],
  ['2026-11-30', '2026-12-02'],
  ['2024-02-29', '2024-03-01'],
];

const localParts = new Map<string, Intl.DateTimeFormat>();
/** The zone's calendar at `ms`: date, hour and minute, and the offset in force. */
function local(zone: string, ms: number) {
  let format = localParts.get(zone);
  if (format === undefined) {
    format = new Intl.DateTimeFormat('en-CA', {
      timeZone: zone,
      hourCycle: 'h23',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      timeZoneName: 'longOffset',
    });
    localParts.set(zone, format);
  }
  const parts = Object.fromEntries(format.formatToParts(ms).map((p) => [p.type, p.value]));
  const date = `${parts.year}-${parts.month}-${parts.day}`;
  return { date, hour: parts.hour ?? '', minute: parts.minute ?? '', offset: parts.timeZoneName };
}

/** The window an instant falls in, named on the zone's calendar. */
function windowLabel(granularity: Granularity | 'total', zone: string, ms: number): string {
  const { date, hour, minute, offset } = local(zone, ms);
  switch (granularity) {
    case 'total':
      return 'total';
    case 'month':
      return date.slice(0, 7);
    case 'day':
      return date;
    case 'hour':
      return `${date}T${hour} ${offset}`;
    case 'minute':
      return `${date}T${hour}:${minute} ${offset}`;
  }
}

function dayBefore(date: string): string {
  return new Date(Date.parse(`${date}T00:00:00Z`) - 86_400_000).toISOString().slice(0, 10);
}

/** Whether the query's windows hold the increment: its local date in the covered range. */
function inPeriod(query: UsageQueryInput, zone: string, ms: number): boolean {
  const { date } = local(zone, ms);
  const [from, to] = [String(query.from), String(query.to)];
  if (query.granularity === 'month') {
    // Windows are whole months: from's month to the month of to's day before.
    return date.slice(0, 7) >= from.slice(0, 7) && date.slice(0, 7) <= dayBefore(to).slice(0, 7);
  }
  return date >= from && date < to;
}

/** The model's answer: every row, in the query's order, buckets as label → value (non-zero). */
function expectedRows(model: Model, query: UsageQueryInput) {
  const zone = query.timeZone ?? 'UTC';
  const groups = new Map<
    string,
    { identity: Record<string, unknown>; windows: Map<string, number> }
  >();
  for (const increment of model) {
    let identity: Record<string, unknown>;
    let key: string;
    if (query.prefix !== undefined) {
      if (increment.labels !== undefined || !increment.counter.startsWith(query.prefix)) continue;
      identity = { counter: increment.counter, labels: {} };
      key = groupKey([increment.counter]);
    } else {
      const labels = increment.labels;
      if (increment.counter !== query.counter || labels === undefined) continue;
      const where = Object.entries(query.where ?? {});
      if (
        !where.every(([k, v]) =>
          [v]
            .flat()
            .map(String)
            .includes(labels[k] ?? '\u0000'),
        )
      )
        continue;
      const groupBy = query.groupBy ?? [];
      identity = { labels: Object.fromEntries(groupBy.map((k) => [k, labels[k] ?? null])) };
      key = groupKey(groupBy.map((k) => labels[k]));
    }
    if (!inPeriod(query, zone, increment.at)) continue;
    let group = groups.get(key);
    if (group === undefined) groups.set(key, (group = { identity, windows: new Map() }));
    const label = windowLabel(query.granularity, zone, increment.at);
    group.windows.set(label, (group.windows.get(label) ?? 0) + increment.by);
  }
  return [...groups.entries()]
    .sort(([a], [b]) => compareCodePoints(a, b))
    .map(([key, { identity, windows }]) => ({
      key,
      ...identity,
      value: [...windows.values()].reduce((sum, value) => sum + value, 0),
      windows: Object.fromEntries([...windows].filter(([, value]) => value !== 0).sort()),
    }));
}

/** Tally's rows in the model's shape (bucket starts named on the zone's calendar). */
function actualRows(rows: UsageRow[], query: UsageQueryInput) {
  const zone = query.timeZone ?? 'UTC';
  return rows.map((row) => {
    const labels = row.buckets.map((bucket) =>
      windowLabel(query.granularity, zone, bucket.start.getTime()),
    );
    // Every window once, consecutive, none shared.
    expect(new Set(labels).size).toBe(labels.length);
    expect(row.value).toBe(row.buckets.reduce((sum, bucket) => sum + bucket.value, 0));
    return {
      key:
        query.prefix !== undefined
          ? groupKey([row.counter])
          : groupKey((query.groupBy ?? []).map((k) => row.labels[k] ?? undefined)),
      ...(row.counter === undefined ? {} : { counter: row.counter }),
      labels: row.labels,
      value: row.value,
      windows: Object.fromEntries(
        row.buckets
          .map((bucket, i): [string, number] => [labels[i] ?? '', bucket.value])
          .filter(([, value]) => value !== 0)
          .sort(),
      ),
    };
  });
}

/** Every page of a query, followed cursor by cursor. */
async function allPages(tally: Tally, query: UsageQueryInput): Promise<UsageRow[]> {
  const rows: UsageRow[] = [];
  let cursor: string | undefined;
  for (let page = 0; page < 100; page++) {
    const result = await tally.query({ ...query, ...(cursor === undefined ? {} : { cursor }) });
    rows.push(...result.rows);
    if (result.nextCursor === null) return rows;
    cursor = result.nextCursor;
  }
  throw new Error('more than 100 pages');
}

async function checkQuery(model: Model, tally: Tally, query: UsageQueryInput) {
  const expected = expectedRows(model, query);
  const rows = await allPages(tally, query);
  const actual = actualRows(rows, query);
  if (query.orderBy === 'value') {
    // Ordered by value, then group: the same rows, in that order.
    const byValue = [...expected].sort((a, b) =>
      a.value === b.value ? compareCodePoints(a.key, b.key) : b.value - a.value,
    );
    expect(actual).toEqual(byValue);
  } else {
    expect(actual).toEqual(query.order === 'desc' ? [...expected].reverse() : expected);
  }
}

class Incr implements fc.AsyncCommand<Model, Real> {
  constructor(readonly increment: Increment) {}
  check = () => true;
  async run(model: Model, real: Real) {
    const { counter, labels, by, at: ms } = this.increment;
    const ref = labels === undefined ? counter : { name: counter, labels };
    expect((await real.tally.incr(ref, by, { at: ms })).status).toBe('applied');
    model.push(this.increment);
  }
  toString = () =>
    `incr(${this.increment.labels === undefined ? this.increment.counter : canonicalName({ name: this.increment.counter, labels: this.increment.labels })}, ${this.increment.by}, ${new Date(this.increment.at).toISOString()})`;
}

class Flush implements fc.AsyncCommand<Model, Real> {
  check = () => true;
  async run(_model: Model, real: Real) {
    // A killed flusher's lock may still be held: the batch then stays in flight.
    await real.tally.flush().catch((error: unknown) => {
      expect(error).toMatchObject({ code: 'BUSY' });
    });
  }
  toString = () => 'flush';
}

class KillFlushingProcess implements fc.AsyncCommand<Model, Real> {
  constructor(readonly point: FaultPoint) {}
  check = () => true;
  async run(model: Model, real: Real) {
    const child = await runTypeScript(flushOnce, [JSON.stringify(real.options)], {
      TALLY_FAULT_POINT: this.point,
    });
    expect(child.signal === 'SIGKILL' || child.code === 0).toBe(true);
    // Right after the crash, before any flush resumes the batch: in flight, in the ledger or not.
    for (const query of [everything, ...fc.sample(aQuery, { numRuns: 3, seed: model.length })]) {
      await checkQuery(model, real.tally, query);
    }
  }
  toString = () => `kill -9 flush at ${this.point}`;
}

class Query implements fc.AsyncCommand<Model, Real> {
  constructor(readonly query: UsageQueryInput) {}
  check = () => true;
  async run(model: Model, real: Real) {
    await checkQuery(model, real.tally, this.query);
  }
  toString = () => `query(${JSON.stringify(this.query)})`;
}

class QueryDuringFlush implements fc.AsyncCommand<Model, Real> {
  constructor(readonly query: UsageQueryInput) {}
  check = () => true;
  async run(model: Model, real: Real) {
    const flush = real.tally.flush().catch((error: unknown) => {
      expect(error).toMatchObject({ code: 'BUSY' });
    });
    await checkQuery(model, real.tally, this.query);
    await flush;
  }
  toString = () => `query during a flush(${JSON.stringify(this.query)})`;
}

const anIncrement = fc
  .record({
    plain: fc.integer({ min: 0, max: 9 }).map((n) => n === 0),
    tenant: fc.constantFrom(...tenants),
    region: fc.option(fc.constantFrom(...regions), { nil: undefined }),
    at: fc.oneof(
      { weight: 3, arbitrary: fc.constantFrom(...nearBoundaries) },
      fc.integer({ min: at('2026-10-20T00:00:00Z'), max: at('2026-12-01T00:00:00Z') }),
      fc.integer({ min: at('2024-01-01T00:00:00Z'), max: at('2026-12-01T00:00:00Z') }),
    ),
    by: fc.integer({ min: -3, max: 9 }).filter((by) => by !== 0),
  })
  .map(({ plain, tenant, region, at: ms, by }) =>
    plain
      ? { counter: `plain:${tenant}`, labels: undefined, at: ms, by }
      : {
          counter: 'api_calls',
          labels: { tenant, ...(region === undefined ? {} : { region }) },
          at: ms,
          by,
        },
  );

const aQuery: fc.Arbitrary<UsageQueryInput> = fc
  .record({
    plain: fc.integer({ min: 0, max: 6 }).map((n) => n === 0),
    where: fc.record(
      {
        tenant: fc.oneof(fc.constantFrom(...tenants), fc.subarray(tenants, { minLength: 1 })),
        region: fc.constantFrom(...regions),
      },
      { requiredKeys: [] },
    ),
    groupBy: fc
      .subarray(['region', 'tenant'])
      .chain((keys) => fc.shuffledSubarray(keys, { minLength: keys.length })),
    window: fc.oneof(
      fc.record({
        granularity: fc.constantFrom<'day' | 'month' | 'total'>('day', 'month', 'total'),
        period: fc.constantFrom(...longPeriods.slice(0, 3)),
      }),
      fc.record({
        granularity: fc.constant('month' as const),
        period: fc.constant(longPeriods[3] ?? ['', '']),
      }),
      fc.record({
        granularity: fc.constantFrom<'hour' | 'minute'>('hour', 'minute'),
        period: fc.constantFrom(...shortPeriods),
      }),
    ),
    timeZone: fc.constantFrom(...zones),
    order: fc.constantFrom({}, { order: 'desc' as const }, { orderBy: 'value' as const }),
    limit: fc.option(fc.integer({ min: 1, max: 4 }), { nil: undefined }),
  })
  .map(({ plain, where, groupBy, window, timeZone, order, limit }) => ({
    ...(plain ? { prefix: 'plain:' } : { counter: 'api_calls', where, groupBy }),
    from: window.period[0],
    to: window.period[1],
    granularity: window.granularity,
    timeZone,
    ...order,
    ...(limit === undefined ? {} : { limit }),
  }));

/** Every labelled increment, by tenant and region, per month. */
const everything: UsageQueryInput = {
  counter: 'api_calls',
  groupBy: ['tenant', 'region'],
  from: '2024-01-01',
  to: '2027-01-01',
  granularity: 'month',
};

const faultPoints: FaultPoint[] = [
  'before-snapshot',
  'after-snapshot',
  'mid-transaction',
  'after-commit',
  'during-acknowledge',
];

/** A fresh, migrated database. */
async function migrated(): Promise<string> {
  const url = await createDatabase();
  await migrate(url);
  return url;
}

let redis: RedisHandle;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});

describe('usage queries against a model', () => {
  let runs = 0;
  it('equal the model across flushes, crashed flushes and flushes during queries', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.commands(
          [
            anIncrement.map((increment) => new Incr(increment)),
            fc.constant(new Flush()),
            aQuery.map((query) => new Query(query)),
            aQuery.map((query) => new QueryDuringFlush(query)),
          ],
          { size: '+1' },
        ),
        async (commands) => {
          // Every crash point in turn, one per run (child processes take a second each).
          const crashAt = faultPoints[runs++ % faultPoints.length] ?? 'after-commit';
          // … inserted mid-run, then queried right away.
          const postgres = await createDatabase();
          await migrate(postgres);
          const options = {
            redis: redis.url,
            postgres,
            keyPrefix: `q${randomBytes(4).toString('hex')}`,
            shards: 2,
            buckets: ['minute', 'hour', 'day', 'month'],
            flushLockTtlMs: 500,
            ...anyDate,
          };
          const tally = await createTally({
            ...options,
            buckets: ['minute', 'hour', 'day', 'month'],
          });
          const model: Model = [];
          try {
            const all = [...commands];
            all.splice(Math.floor(all.length / 2), 0, new KillFlushingProcess(crashAt));
            await fc.asyncModelRun(() => ({ model, real: { tally, options } }), all);
            // Everything flushed, the model still holds.
            await waitFor('the killed flusher’s lock to expire', () => tally.flush(), {
              timeoutMs: 10_000,
            });
            for (const query of [
              everything,
              ...fc.sample(aQuery, { numRuns: 5, seed: model.length }),
            ]) {
              await checkQuery(model, tally, query);
            }
          } finally {
            await tally.close();
          }
        },
      ),
      { numRuns: 12 },
    );
  });
});

describe('usage queries on the calendar', () => {
  it('sums DST days of 23 and 25 hours, and refuses a half-hour zone without minute buckets', async () => {
    const tally = await createTally({
      redis: redis.url,
      postgres: await migrated(),
      keyPrefix: `d${randomBytes(4).toString('hex')}`,
      shards: 2,
      ...anyDate,
    });
    try {
      // One increment every UTC hour around both DST changes of 2026, half of them flushed.
      const hoursFrom = (iso: string, count: number) =>
        Array.from({ length: count }, (_, i) => Date.parse(iso) + i * 3_600_000);
      const instants = [
        ...hoursFrom('2026-03-07T00:00:00Z', 24 * 24),
        ...hoursFrom('2026-10-23T00:00:00Z', 24 * 12),
      ];
      for (const [i, ms] of instants.entries()) {
        await tally.incr({ name: 'calls', labels: { tenant: 'acme' } }, 1, { at: ms });
        if (i % 97 === 0) await tally.flush();
      }
      const dayLengths = async (timeZone: string, from: string, to: string) =>
        (
          await tally.query({ counter: 'calls', from, to, granularity: 'day', timeZone })
        ).rows[0]?.buckets.map((bucket) => bucket.value);
      expect(await dayLengths('Europe/Berlin', '2026-03-28', '2026-03-31')).toEqual([24, 23, 24]);
      expect(await dayLengths('Europe/Berlin', '2026-10-24', '2026-10-27')).toEqual([24, 25, 24]);
      expect(await dayLengths('America/New_York', '2026-03-07', '2026-03-10')).toEqual([
        24, 23, 24,
      ]);
      expect(await dayLengths('America/New_York', '2026-10-31', '2026-11-03')).toEqual([
        24, 25, 24,
      ]);
      await expect(
        tally.query({
          counter: 'calls',
          from: '2026-03-08',
          to: '2026-03-09',
          granularity: 'day',
          timeZone: 'Asia/Kolkata',
        }),
      ).rejects.toThrow(/keep 'minute' buckets \(option buckets, TALLY_BUCKETS\)/);
    } finally {
      await tally.close();
    }
  });

  it('pages through every group once while increments continue', async () => {
    const tally = await createTally({
      redis: redis.url,
      postgres: await migrated(),
      keyPrefix: `p${randomBytes(4).toString('hex')}`,
      shards: 4,
      ...anyDate,
    });
    try {
      const at = Date.parse('2026-11-10T00:00:00Z');
      const tenant = (i: number) => `t${String(i).padStart(3, '0')}`;
      for (let i = 0; i < 200; i += 2) {
        await tally.incr({ name: 'calls', labels: { tenant: tenant(i) } }, 1, { at });
      }
      await tally.flush();
      const seen: string[] = [];
      let cursor: string | undefined;
      let round = 0;
      do {
        const page = await tally.query({
          counter: 'calls',
          groupBy: ['tenant'],
          from: '2026-11-01',
          to: '2026-12-01',
          granularity: 'month',
          limit: 7,
          ...(cursor === undefined ? {} : { cursor }),
        });
        seen.push(...page.rows.map((row) => String(row.labels.tenant)));
        cursor = page.nextCursor ?? undefined;
        // Between pages: more usage for groups already seen and not yet seen, new groups on
        // both sides of the cursor, and a flush now and then.
        round++;
        await tally.incr({ name: 'calls', labels: { tenant: tenant((round * 13) % 200) } }, 1, {
          at,
        });
        await tally.incr({ name: 'calls', labels: { tenant: tenant(2 * round + 1) } }, 1, { at });
        if (round % 3 === 0) await tally.flush();
      } while (cursor !== undefined);
      expect(new Set(seen).size).toBe(seen.length);
      for (let i = 0; i < 200; i += 2) expect(seen).toContain(tenant(i));
      expect([...seen].sort()).toEqual(seen);
    } finally {
      await tally.close();
    }
  });
});

describe('usage queries over thousands of counters', () => {
  it('reads each of thousands of counters once, new or flushed, glob characters in labels included', async () => {
    const tally = await createTally({
      redis: redis.url,
      postgres: await migrated(),
      keyPrefix: `g${randomBytes(4).toString('hex')}`,
      shards: 1, // one hash of 3,000 fields: a scan of many pages
      ...anyDate,
    });
    try {
      const at = Date.parse('2026-11-10T00:00:00Z');
      const tenants = Array.from({ length: 3_000 }, (_, i) => `t*?[${i}]\\`);
      const incrementAll = async () => {
        for (let i = 0; i < tenants.length; i += 500) {
          await tally.incrMany(
            tenants.slice(i, i + 500).map((tenant, k) => ({
              counter: {
                name: 'calls',
                labels: { tenant, region: (i + k) % 2 === 0 ? 'eu' : 'us' },
              },
              by: i + k + 1,
              at,
            })),
          );
        }
      };
      const total = async (where: NonNullable<UsageQueryInput['where']>) =>
        (
          await tally.query({
            counter: 'calls',
            where,
            from: '2026-11-01',
            to: '2026-12-01',
            granularity: 'total',
          })
        ).rows[0]?.value;
      const groups = async () =>
        (
          await tally.query({
            counter: 'calls',
            groupBy: ['tenant'],
            from: '2026-11-01',
            to: '2026-12-01',
            granularity: 'total',
            limit: 10_000,
          })
        ).rows;
      // New to the store: looked up among the shard's new counters.
      await incrementAll();
      expect(await total({})).toBe((3_000 * 3_001) / 2);
      expect(await total({ region: 'eu' })).toBe(1_500 * 1_500);
      expect(await total({ tenant: 't*?[41]\\' })).toBe(42);
      expect(await groups()).toHaveLength(3_000);
      // Flushed, then counted again: named by PostgreSQL (one tenant), or too many to name, so
      // every pending field is scanned (all of them, a region).
      await tally.flush();
      await incrementAll();
      expect(await total({})).toBe(3_000 * 3_001);
      expect(await total({ region: 'eu' })).toBe(2 * 1_500 * 1_500);
      expect(await total({ tenant: 't*?[41]\\' })).toBe(84);
      const again = await groups();
      expect(again).toHaveLength(3_000);
      expect(again.find((row) => row.labels.tenant === 't*?[2999]\\')?.value).toBe(6_000);
    } finally {
      await tally.close();
    }
  });
  it('reads a shard whose deltas span thousands of buckets in work bounded by its fields', async () => {
    const keyPrefix = `b${randomBytes(4).toString('hex')}`;
    const tally = await createTally({
      redis: redis.url,
      postgres: await migrated(),
      keyPrefix,
      shards: 1,
      buckets: ['minute'],
      ...anyDate,
    });
    const admin = new Redis(redis.url);
    try {
      // A thousand counters PostgreSQL names; one of them then counted in 2,000 minutes (a
      // backfill, or flushes stalled): 2,000 bucket tags over 3,000 pending fields.
      const start = Date.parse('2026-11-10T00:00:00Z');
      const tenants = Array.from({ length: 1_000 }, (_, i) => `t${i}`);
      const calls = (tenant: string) => ({ name: 'calls', labels: { tenant } });
      await tally.incrMany(tenants.map((tenant) => ({ counter: calls(tenant), by: 1, at: start })));
      await tally.flush();
      for (let minute = 0; minute < 2_000; minute += 500) {
        await tally.incrMany(
          Array.from({ length: 500 }, (_, k) => ({
            counter: calls('t0'),
            by: 1,
            at: start + (minute + k) * 60_000,
          })),
        );
      }
      await tally.incrMany(tenants.map((tenant) => ({ counter: calls(tenant), by: 1, at: start })));
      const fields = await admin.hlen(shardKeys(keyPrefix, 0).pending);
      const getsBefore = await commandCalls(admin, 'hget');
      const { rows } = await tally.query({
        counter: 'calls',
        from: '2026-11-01',
        to: '2026-12-01',
        granularity: 'total',
      });
      expect(rows[0]?.value).toBe(1_000 + 2_000 + 1_000);
      // Looking up each named counter under each tag would be 2,000,000 reads.
      const gets = (await commandCalls(admin, 'hget')) - getsBefore;
      expect(fields).toBeGreaterThan(2_000);
      expect(gets).toBeLessThanOrEqual(fields);
    } finally {
      admin.disconnect();
      await tally.close();
    }
  });
});

describe('usage queries while one flush runs between their reads', () => {
  // The query stalls at its point; the flush, started meanwhile, stalls at its own: so the
  // query reads Redis again with the flush caught half-way.
  const cases = [
    {
      stalls: 'query-after-snapshot:1500,after-snapshot:3000',
      what: "a batch snapshotted after the query's snapshot, still in flight",
    },
    {
      stalls: 'query-before-snapshot:1500,after-commit:3000',
      what: "a batch applied before the query's snapshot, not yet acknowledged",
    },
  ];
  it.each(cases)('count $what once', async ({ stalls }) => {
    const tally = await createTally({
      redis: redis.url,
      postgres: await migrated(),
      keyPrefix: `s${randomBytes(4).toString('hex')}`,
      shards: 1,
      ...anyDate,
    });
    const at = Date.parse('2026-11-10T00:00:00Z');
    const acme = { name: 'calls', labels: { tenant: 'acme' } };
    const before = process.env.TALLY_FAULT_DELAY;
    try {
      await tally.incr(acme, 5, { at });
      await tally.flush(); // acme is in PostgreSQL: named by the query's snapshot
      await tally.incr(acme, 3, { at });
      await tally.incr({ name: 'calls', labels: { tenant: 'new' } }, 2, { at }); // new to the store
      process.env.TALLY_FAULT_DELAY = stalls;
      const query = tally.query({
        counter: 'calls',
        groupBy: ['tenant'],
        from: '2026-11-01',
        to: '2026-12-01',
        granularity: 'total',
      });
      await sleep(300); // the query has read where the flushes stand, and stalls
      const flush = tally.flush();
      const { rows } = await query;
      await flush;
      expect(rows.map((row) => [row.labels.tenant, row.value])).toEqual([
        ['acme', 8],
        ['new', 2],
      ]);
    } finally {
      if (before === undefined) delete process.env.TALLY_FAULT_DELAY;
      else process.env.TALLY_FAULT_DELAY = before;
      await tally.close();
    }
  });
});
