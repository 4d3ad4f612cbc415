import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { OverflowError, TallyError } from '../src/index.js';
import { createDatabase, startRedis, waitFor, type RedisHandle } from './support/index.js';
import { shardOf } from '../src/counters/sharding.js';
import { shardKeys } from '../src/redis/shard-keys.js';
import { commandCalls } from './support/redis-stats.js';
import { postgresTotals, tallyOn } from './support/tally-store.js';

let redis: RedisHandle;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});

async function fresh(options: Parameters<typeof tallyOn>[2] = {}) {
  const url = await createDatabase();
  const keyPrefix = options.keyPrefix ?? `e${randomBytes(4).toString('hex')}`;
  const tally = await tallyOn(redis.url, url, { shards: 4, ...options, keyPrefix });
  const pool = new pg.Pool({ connectionString: url });
  onTestFinished(async () => {
    await tally.close();
    await pool.end();
  });
  return { tally, pool, url, keyPrefix };
}

/** A client of the test's Redis of its own, for statistics and direct reads. */
function rawRedis(): Redis {
  const raw = new Redis(redis.url);
  onTestFinished(async () => {
    await raw.quit();
  });
  return raw;
}

/** Script calls Redis ran since its statistics were reset (EVALSHA, or EVAL on a first load). */
async function scriptCalls(raw: Redis): Promise<number> {
  return (await commandCalls(raw, 'evalsha')) + (await commandCalls(raw, 'eval'));
}

describe('increments and reads', () => {
  it('adds, returns the new total, and reads it back', async () => {
    const { tally } = await fresh();
    expect(await tally.incr('a')).toEqual({ status: 'applied', value: 1, duplicate: false });
    expect((await tally.incr('a', 41)).value).toBe(42);
    expect((await tally.incr('a', -2)).value).toBe(40);
    expect(await tally.get('a')).toBe(40);
    expect(await tally.getMany(['a', 'never', 'a'])).toEqual([40, 0, 40]);
  });

  it('coalesces concurrent increments and gives each a value of one serial order', async () => {
    const { tally } = await fresh();
    const results = await Promise.all(
      Array.from({ length: 500 }, (_, i) => tally.incr(`c${i % 3}`, 1)),
    );
    for (const counter of [0, 1, 2]) {
      const values = results
        .filter((_, i) => i % 3 === counter)
        .map((result) => result.value)
        .sort((a, b) => a - b);
      // Every caller saw a distinct total, and together they are exactly 1..n.
      expect(values).toEqual(Array.from({ length: values.length }, (_, i) => i + 1));
    }
    expect(await tally.getMany(['c0', 'c1', 'c2'])).toEqual([167, 167, 166]);
  });

  it('merges the plain increments of one tick per counter: one script entry each', async () => {
    const { tally } = await fresh({ buckets: ['hour', 'day', 'month'] });
    const raw = rawRedis();
    await tally.incr('warm-up'); // script loaded, shard built
    await raw.config('RESETSTAT');

    const at = Date.UTC(2026, 0, 1, 12);
    await Promise.all(Array.from({ length: 600 }, (_, i) => tally.incr(`m${i % 3}`, 1, { at })));

    // At most one script call per shard, and per counter one entry: its total and one pending
    // delta (tagged with all three buckets) = 2 HINCRBYs each, not 600 × 2 nor 3 × 4.
    expect(await commandCalls(raw, 'evalsha')).toBeLessThanOrEqual(4);
    expect(await commandCalls(raw, 'hincrby')).toBe(3 * 2);
    expect(await tally.getMany(['m0', 'm1', 'm2'])).toEqual([200, 200, 200]);
  });

  it('splits a big group into script calls of at most 1,000 entries, counting every one', async () => {
    const { tally } = await fresh({ shards: 1 });
    const raw = rawRedis();
    await tally.incr('warm-up');
    await raw.config('RESETSTAT');
    // One tick, one shard, 20,000 distinct counters (plus repeats that merge into them).
    const names = Array.from({ length: 20_000 }, (_, i) => `big-${i}`);
    await Promise.all([...names, ...names.slice(0, 500)].map((name) => tally.incr(name)));
    expect(await commandCalls(raw, 'evalsha')).toBe(20);
    const values = await tally.getMany(names);
    expect(values.slice(0, 500).every((v) => v === 2)).toBe(true);
    expect(values.slice(500).every((v) => v === 1)).toBe(true);
  });

  it('puts increments of one tick with different times into their own buckets', async () => {
    const { tally } = await fresh({ buckets: ['hour', 'day'] });
    const noon = Date.UTC(2026, 10, 21, 12);
    const times = [noon, noon + 60_000, noon - 3_600_000, noon - 24 * 3_600_000, noon];
    await Promise.all(times.map((at, i) => tally.incr('when', i + 1, { at })));
    const hours = await tally.usage('when', {
      from: noon - 3_600_000,
      to: noon + 3_600_000,
      granularity: 'hour',
    });
    expect(hours.map((b) => b.value)).toEqual([3, 1 + 2 + 5]);
    const days = await tally.usage('when', {
      from: noon - 24 * 3_600_000,
      to: noon + 1,
      granularity: 'day',
    });
    expect(days.map((b) => b.value)).toEqual([4, 1 + 2 + 3 + 5]);
    await tally.flush();
    expect(
      (await tally.usage('when', { from: noon, to: noon + 1, granularity: 'day' }))[0]?.value,
    ).toBe(11);
  });

  it('flushes deltas into the buckets they were counted in, whatever the flusher keeps', async () => {
    const { tally, pool, url } = await fresh({ buckets: ['hour'], keyPrefix: 'regranulated' });
    const at = Date.UTC(2026, 10, 21, 10, 30);
    await tally.incr('g', 5, { at });
    // A process configured with other buckets (a rolling deploy) flushes the same store.
    const other = await tallyOn(redis.url, url, {
      shards: 4,
      buckets: ['day'],
      keyPrefix: 'regranulated',
    });
    onTestFinished(() => other.close());
    await other.flush();
    const { rows } = await pool.query<{ granularity: string; value: string }>(
      'SELECT granularity, value::text FROM tally.counter_buckets WHERE name = $1',
      ['g'],
    );
    expect(rows).toEqual([{ granularity: 'hour', value: '5' }]);
    expect((await tally.usage('g', { from: at, to: at + 1, granularity: 'hour' }))[0]?.value).toBe(
      5,
    );
  });

  it('decides merged increments one by one when their sum would overflow', async () => {
    const { tally } = await fresh();
    await tally.incr('edge', Number.MAX_SAFE_INTEGER - 5);
    const results = await Promise.allSettled(
      Array.from({ length: 10 }, () => tally.incr('edge', 1)),
    );
    const applied = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r) => r.status === 'rejected');
    expect(applied).toHaveLength(5);
    expect(refused.map((r) => (r.reason as { code: string }).code)).toEqual(
      Array(5).fill('OVERFLOW'),
    );
    expect(await tally.get('edge')).toBe(Number.MAX_SAFE_INTEGER);
  });

  it('works the same with coalescing off, one script call per increment', async () => {
    const raw = rawRedis();
    // Plain, keyed (one retried) and limited increments, all at once on a few counters.
    const workload = (tally: Awaited<ReturnType<typeof fresh>>['tally']) =>
      Promise.all(
        Array.from({ length: 60 }, (_, i) => {
          if (i % 3 === 0) return tally.incr('x', 2);
          if (i % 3 === 1) return tally.incr('y', 1, { idempotencyKey: `k${Math.floor(i / 6)}` });
          return tally.incr('z', 5, { limit: 40 });
        }),
      );
    const results = [];
    const calls = [];
    for (const coalesce of [true, false]) {
      const { tally } = await fresh({ coalesce });
      await tally.getMany(['x', 'y', 'z']); // shards built, scripts loaded
      await raw.config('RESETSTAT');
      results.push(await workload(tally));
      calls.push(await scriptCalls(raw));
      expect(await tally.getMany(['x', 'y', 'z'])).toEqual([40, 10, 40]);
    }
    expect(results[1]).toEqual(results[0]);
    expect(calls[0]).toBeLessThanOrEqual(4); // one call per shard
    expect(calls[1]).toBe(60);
  });

  it('counts a retried idempotency key once', async () => {
    const { tally } = await fresh();
    expect(await tally.incr('a', 5, { idempotencyKey: 'req-1' })).toMatchObject({ value: 5 });
    expect(await tally.incr('a', 5, { idempotencyKey: 'req-1' })).toEqual({
      status: 'duplicate',
      value: 5,
      duplicate: true,
    });
    // Keys are per counter: the same key on another counter is another request.
    expect((await tally.incr('b', 1, { idempotencyKey: 'req-1' })).duplicate).toBe(false);
    // Twice in one coalesced group: still once.
    const both = await Promise.all([
      tally.incr('a', 1, { idempotencyKey: 'req-2' }),
      tally.incr('a', 1, { idempotencyKey: 'req-2' }),
    ]);
    expect(both.map((r) => r.status)).toEqual(['applied', 'duplicate']);
    expect(await tally.get('a')).toBe(6);
  });

  it('applies an increment under a limit only while the total stays within it', async () => {
    const { tally } = await fresh();
    expect((await tally.incr('q', 8, { limit: 10 })).status).toBe('applied');
    expect(await tally.incr('q', 3, { limit: 10 })).toEqual({
      status: 'over-limit',
      value: 8,
      duplicate: false,
      limit: 10,
      usage: 8,
      remaining: 2,
      periodStart: null,
      resetAt: null,
      limitExceeded: false,
    });
    expect((await tally.incr('q', 2, { limit: 10 })).value).toBe(10);
    // Concurrent callers racing for the last units: exactly the limit is granted.
    const racing = await Promise.all(
      Array.from({ length: 20 }, () => tally.incr('r', 1, { limit: 7 })),
    );
    expect(racing.filter((r) => r.status === 'applied')).toHaveLength(7);
    expect(await tally.get('r')).toBe(7);
  });

  it('refuses an increment that would leave ±(2^53−1), whole, and keeps flushing others', async () => {
    const { tally, pool } = await fresh();
    const max = Number.MAX_SAFE_INTEGER;
    await tally.incr('big', max - 1);
    await expect(tally.incr('big', 2)).rejects.toMatchObject({ code: 'OVERFLOW' });
    expect(await tally.get('big')).toBe(max - 1);
    expect((await tally.incr('big', 1)).value).toBe(max);
    await tally.incr('small', -max);
    await expect(tally.incr('small', -1)).rejects.toMatchObject({ code: 'OVERFLOW' });
    await tally.incr('other', 3);
    await tally.flush();
    expect(Object.fromEntries(await postgresTotals(pool))).toEqual({
      big: max,
      other: 3,
      small: -max,
    });
  });

  it('rejects bad input with a typed error and changes nothing', async () => {
    const { tally } = await fresh();
    const bad: [unknown, unknown, object?][] = [
      ['', 1],
      ['x'.repeat(257), 1],
      ['tab\there', 1],
      [42, 1],
      ['ok', 1.5],
      ['ok', Number.MAX_SAFE_INTEGER + 1],
      ['ok', '1'],
      ['ok', 1, { limit: 0.5 }],
      ['ok', 1, { idempotencyKey: '' }],
      ['ok', 1, { at: new Date('nope') }],
      ['ok', 1, null as unknown as object],
    ];
    for (const [counter, by, options] of bad) {
      const call = tally.incr(counter as string, by as number, options);
      await expect(call).rejects.toBeInstanceOf(TallyError);
      await expect(call).rejects.toMatchObject({ code: 'VALIDATION' });
    }
    // One bad item in a batch: nothing of the batch is applied.
    await expect(
      tally.incrMany([
        { counter: 'ok', by: 1 },
        { counter: 'ok', by: 0.5 },
      ]),
    ).rejects.toMatchObject({ code: 'VALIDATION' });
    expect(await tally.get('ok')).toBe(0);
  });

  it('incrMany reports each item, an overflowing one included, and applies the others', async () => {
    const { tally } = await fresh();
    await tally.incr('full', Number.MAX_SAFE_INTEGER);
    const results = await tally.incrMany([
      { counter: 'x', by: 2 },
      { counter: 'full', by: 1 },
      { counter: 'q', by: 5, limit: 3 },
      { counter: 'x', by: 1, idempotencyKey: 'k' },
      { counter: 'x', by: 1, idempotencyKey: 'k' },
    ]);
    expect(results.map((r) => [r.status, r.value])).toEqual([
      ['applied', 2],
      ['overflow', Number.MAX_SAFE_INTEGER],
      ['over-limit', 0],
      ['applied', 3],
      ['duplicate', 3],
    ]);
    await expect(tally.incr('full', 1)).rejects.toBeInstanceOf(OverflowError);
    expect(await tally.incrMany([])).toEqual([]);
  });

  it('canonicalises labels to one name', async () => {
    const { tally } = await fresh();
    await tally.incr({ name: 'api_calls', labels: { tenant: 'acme', region: 'eu' } });
    await tally.incr({ name: 'api_calls', labels: { region: 'eu', tenant: 'acme' } });
    expect(await tally.get('api_calls{region="eu",tenant="acme"}')).toBe(2);
  });
});

describe('increments dated before a retention', () => {
  it('are refused when a kept granularity prunes their bucket, and so are reads of pruned buckets', async () => {
    const hour = 3_600_000;
    const { tally } = await fresh({
      buckets: ['minute', 'hour'],
      retention: { minute: '1d' },
      maxBackdateMs: 35 * 24 * hour,
    });
    const twoDaysAgo = Date.now() - 48 * hour;
    const refusal = await tally
      .incr('late', 5, { at: twoDaysAgo })
      .catch((error: unknown) => error);
    expect(refusal).toBeInstanceOf(TallyError);
    expect(refusal).toMatchObject({ code: 'VALIDATION' });
    expect((refusal as Error).message).toMatch(
      /is older than the minute buckets are kept \(1 day: option retention, TALLY_RETENTION\)/,
    );
    // One refused entry refuses the whole batch, before anything is counted.
    await expect(
      tally.incrMany([
        { counter: 'late', by: 1 },
        { counter: 'late', by: 1, at: twoDaysAgo },
      ]),
    ).rejects.toMatchObject({ code: 'VALIDATION' });
    expect(await tally.get('late')).toBe(0);
    await tally.incr('late', 2, { at: Date.now() - 23 * hour });
    expect(await tally.get('late')).toBe(2);

    // Reads of buckets the retention may have pruned are refused, not answered with 0.
    const minute = 60_000;
    const sinceMinute = Math.floor((Date.now() - 23 * hour) / minute) * minute;
    const minutes = await tally.usage('late', {
      from: sinceMinute,
      to: Date.now(),
      granularity: 'minute',
    });
    expect(minutes.reduce((sum, bucket) => sum + bucket.value, 0)).toBe(2);
    for (const read of [
      () => tally.usage('late', { from: twoDaysAgo, to: Date.now(), granularity: 'minute' }),
      () =>
        tally.query({
          prefix: 'late',
          from: new Date(Math.floor(twoDaysAgo / minute) * minute),
          to: new Date(sinceMinute),
          granularity: 'minute',
        }),
    ]) {
      await expect(read()).rejects.toThrow(
        /but minute buckets are kept 1 day \(option retention, TALLY_RETENTION\)/,
      );
    }
    // Hours are kept 90 days by default: the same period in hours is answered.
    const sinceHour = Math.floor(twoDaysAgo / hour) * hour;
    const hourly = await tally.query({
      prefix: 'late',
      from: new Date(sinceHour),
      to: new Date(sinceHour + 72 * hour),
      granularity: 'total',
    });
    expect(hourly.rows[0]?.value).toBe(2);

    // Without minute buckets the minute retention does not apply; the backdating window does.
    const { tally: hoursOnly } = await fresh({ buckets: ['hour'], retention: { minute: '1d' } });
    await hoursOnly.incr('late', 5, { at: twoDaysAgo });
    expect(await hoursOnly.get('late')).toBe(5);
  });
});

describe('flush', () => {
  it('logs and counts a shard lock it could not renew, and still flushes exactly', async () => {
    const lines: { msg: string; lockKey?: string }[] = [];
    const logger = pino(
      { level: 'warn' },
      {
        write(line: string) {
          lines.push(JSON.parse(line) as { msg: string });
        },
      },
    );
    const keyPrefix = 'renewal';
    const { tally, url } = await fresh({ shards: 1, keyPrefix, flushLockTtlMs: 300, logger });
    await tally.incr('r', 4);
    // The flush stalls mid-transaction while its lock is taken from it (as a pause past the
    // TTL would let another process do).
    process.env.TALLY_FAULT_DELAY = 'mid-transaction:600';
    try {
      const flushing = tally.flush();
      const raw = new Redis(redis.url);
      const { lock, inflightMeta } = shardKeys(keyPrefix, 0);
      // Taken only once the snapshot is made: a lock lost before it makes the flush give up
      // (nothing snapshotted), which is the other case, not this one.
      await waitFor('the flush to snapshot under its lock', async () =>
        (await raw.exists(inflightMeta)) === 1 ? true : undefined,
      );
      await raw.del(lock);
      await raw.quit();
      await flushing;
    } finally {
      delete process.env.TALLY_FAULT_DELAY;
    }
    expect(tally.lockRenewalFailures).toBeGreaterThan(0);
    expect(lines.some((line) => line.msg === 'shard lock renewal failed')).toBe(true);
    expect((await postgresTotals(url)).get('r')).toBe(4);
  });

  it('moves totals and buckets into PostgreSQL exactly once', async () => {
    const { tally, pool } = await fresh({ buckets: ['hour', 'day'] });
    const at = Date.UTC(2026, 10, 21, 10, 30);
    await tally.incr('a', 3, { at });
    await tally.incr('a', 4, { at: at + 3_600_000 });
    await tally.incr('b', -1, { at });

    const applied = await tally.flush();
    expect(applied.reduce((n, batch) => n + batch.counters, 0)).toBe(2);
    expect(Object.fromEntries(await postgresTotals(pool))).toEqual({ a: 7, b: -1 });
    expect(await tally.flush()).toEqual([]);
    expect(Object.fromEntries(await postgresTotals(pool))).toEqual({ a: 7, b: -1 });
    expect(await tally.get('a')).toBe(7);

    const { rows } = await pool.query<{ granularity: string; start: Date; value: string }>(
      `SELECT granularity, bucket_start AS start, value FROM tally.counter_buckets
       WHERE name = 'a' ORDER BY granularity, bucket_start`,
    );
    expect(rows.map((r) => [r.granularity, r.start.toISOString(), Number(r.value)])).toEqual([
      ['day', '2026-11-21T00:00:00.000Z', 7],
      ['hour', '2026-11-21T10:00:00.000Z', 3],
      ['hour', '2026-11-21T11:00:00.000Z', 4],
    ]);
  });

  it('answers usage exactly over flushed and pending deltas', async () => {
    const { tally } = await fresh({ buckets: ['hour'] });
    const at = Date.UTC(2026, 10, 21, 10, 0);
    await tally.incr('u', 5, { at });
    await tally.flush();
    await tally.incr('u', 2, { at: at + 60_000 });
    await tally.incr('u', 1, { at: at + 2 * 3_600_000 });
    const usage = await tally.usage('u', { from: at, to: at + 3 * 3_600_000, granularity: 'hour' });
    expect(usage.map((b) => b.value)).toEqual([7, 0, 1]);
    expect(usage[0]?.start.toISOString()).toBe('2026-11-21T10:00:00.000Z');
    await expect(
      tally.usage('u', { from: at, to: at + 1, granularity: 'day' }),
    ).rejects.toMatchObject({ code: 'VALIDATION' });
  });

  it('reads 20,000 totals, and 10,000 minute buckets (the most a query may ask), in one call each', async () => {
    const { tally } = await fresh({ buckets: ['minute'] });
    const end = Date.UTC(2026, 10, 21);
    const start = end - 10_000 * 60_000;
    await tally.incr('busy', 3, { at: start + 90_000 });
    await tally.incr('busy', 4, { at: end - 1 });
    const raw = rawRedis();
    await raw.config('RESETSTAT');
    const minutes = await tally.usage('busy', { from: start, to: end, granularity: 'minute' });
    expect(await scriptCalls(raw)).toBe(1);
    expect(minutes).toHaveLength(10_000);
    expect(minutes.filter((b) => b.value !== 0).map((b) => b.value)).toEqual([3, 4]);
    const names = Array.from({ length: 20_000 }, (_, i) => (i === 19_999 ? 'busy' : `none-${i}`));
    await raw.config('RESETSTAT');
    const values = await tally.getMany(names);
    expect(await scriptCalls(raw)).toBe(4); // one per shard
    expect(values.at(-1)).toBe(7);
    expect(values.filter((v) => v !== 0)).toHaveLength(1);
  });

  it('reports status: pending counters and the age of the oldest unflushed delta', async () => {
    const { tally, keyPrefix } = await fresh();
    await tally.incr('s', 1);
    // The delta arrived 5 s ago, as far as Redis' record of it says (no test waits 5 s).
    const shard = shardOf('s', 4);
    await rawRedis().set(shardKeys(keyPrefix, shard).pendingSince, Date.now() - 5_000);
    const before = await tally.status();
    const age = before.shards[shard]?.oldestUnflushedAgeMs ?? 0;
    expect(age).toBeGreaterThanOrEqual(5_000);
    expect(age).toBeLessThan(5_000 + 2_000);
    expect(before.shards.filter((s) => s.oldestUnflushedAgeMs > 0)).toHaveLength(1);
    expect(before.shards.reduce((n, s) => n + s.pendingDeltas, 0)).toBe(1);
    expect(before.shards.every((s) => s.totalsValid)).toBe(true);
    expect(before.redis.appendonly).toBe(false);
    await tally.flush();
    const after = await tally.status();
    expect(after.shards.every((s) => s.pendingDeltas === 0 && s.inflightBatch === null)).toBe(true);
    expect(after.shards.every((s) => s.oldestUnflushedAgeMs === 0)).toBe(true);
  });
});
