import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { TallyError, type LimitOptions, type Tally, type TallyOptions } from '../src/index.js';
import fc from 'fast-check';
import { quotaPeriodOf, resolveQuotaPeriod } from '../src/counters/quota-periods.js';
import { shardOf } from '../src/counters/sharding.js';
import { shardKeys } from '../src/redis/shard-keys.js';
import { createDatabase, startRedis, type RedisHandle } from './support/index.js';
import { tallyOn } from './support/tally-store.js';

let redis: RedisHandle;
beforeAll(async () => {
  redis = await startRedis({ persistence: 'aof-always' });
});
afterAll(async () => {
  await redis.stop();
});

/** A store and `clients` Tally clients on it (one namespace), closed when the test ends. */
async function store(options: Partial<TallyOptions> = {}, clients = 1) {
  const url = await createDatabase();
  const keyPrefix = `q${randomBytes(4).toString('hex')}`;
  const tallies: Tally[] = [];
  for (let i = 0; i < clients; i++) {
    tallies.push(await tallyOn(redis.url, url, { shards: 2, ...options, keyPrefix }));
  }
  const pool = new pg.Pool({ connectionString: url });
  const raw = new Redis(redis.url);
  onTestFinished(async () => {
    await Promise.all(tallies.map((tally) => tally.close()));
    await pool.end();
    await raw.quit();
  });
  const [tally] = tallies as [Tally, ...Tally[]];
  return { tally, tallies, pool, raw, keyPrefix };
}

const monthly = (max: number, extra: Partial<LimitOptions> = {}): LimitOptions => ({
  max,
  per: 'month',
  ...extra,
});

describe('periodic quotas', () => {
  it("count the period's flushed and pending usage, and reset with the period", async () => {
    const { tally } = await store();
    const november = Date.UTC(2026, 10, 10);
    // Usage before any limit was asked for: 4 flushed, 3 pending, 2 in October (another period).
    await tally.incr('api', 4, { at: november });
    await tally.incr('api', 2, { at: Date.UTC(2026, 9, 31, 23) });
    await tally.flush();
    await tally.incr('api', 3, { at: november });

    const limit = monthly(10);
    const applied = await tally.incr('api', 2, { at: november, limit });
    expect(applied).toEqual({
      status: 'applied',
      value: 11,
      duplicate: false,
      limit: 10,
      usage: 9,
      remaining: 1,
      periodStart: new Date(Date.UTC(2026, 10, 1)),
      resetAt: new Date(Date.UTC(2026, 11, 1)),
      limitExceeded: false,
    });
    expect(await tally.incr('api', 2, { at: november, limit })).toMatchObject({
      status: 'over-limit',
      value: 11,
      usage: 9,
      remaining: 1,
    });
    // A check decides without counting; by 0 asks whether the usage is within the limit.
    expect(await tally.incr('api', 1, { at: november, limit, check: true })).toMatchObject({
      status: 'allowed',
      usage: 9,
    });
    expect(await tally.get('api')).toBe(11);
    expect((await tally.incr('api', 1, { at: november, limit })).remaining).toBe(0);
    expect((await tally.incr('api', 1, { at: november, limit })).status).toBe('over-limit');
    expect((await tally.incr('api', 0, { at: november, limit })).status).toBe('applied');
    // Refunds always pass; soft limits apply and say so.
    expect(await tally.incr('api', -3, { at: november, limit })).toMatchObject({
      status: 'applied',
      usage: 7,
    });
    expect(
      await tally.incr('api', 5, { at: november, limit: monthly(10, { mode: 'soft' }) }),
    ).toMatchObject({ status: 'applied', usage: 12, remaining: 0, limitExceeded: true });
    // December starts from 0.
    expect(await tally.incr('api', 10, { at: Date.UTC(2026, 11, 1), limit })).toMatchObject({
      status: 'applied',
      usage: 10,
      resetAt: new Date(Date.UTC(2027, 0, 1)),
    });
  });

  it("reset exactly at the zone's midnight on the anchor day, the month's last day when shorter", async () => {
    const { tally } = await store();
    const limit = monthly(5, { timeZone: 'Europe/Berlin', anchorDay: 31 });
    // Berlin is UTC+1 in winter: its 2026-02-28 00:00 (February's period start, the last day)
    // is 2026-02-27T23:00Z.
    const boundary = Date.UTC(2026, 1, 27, 23);
    expect(await tally.incr('b', 5, { at: boundary - 1, limit })).toMatchObject({
      status: 'applied',
      resetAt: new Date(boundary),
    });
    expect((await tally.incr('b', 1, { at: boundary - 1, limit })).status).toBe('over-limit');
    const next = await tally.incr('b', 5, { at: boundary, limit });
    expect(next).toMatchObject({ status: 'applied', usage: 5 });
    // March's period starts on the 31st again, at Berlin's midnight: summer time (UTC+2) by then.
    expect(next.resetAt).toEqual(new Date(Date.UTC(2026, 2, 30, 22)));
    // The old period is still whole when a late increment asks for it.
    expect((await tally.incr('b', 1, { at: boundary - 1, limit })).status).toBe('over-limit');
  });

  it('never let concurrent clients of several processes past max, while flushes run', async () => {
    const { tallies, tally } = await store({}, 3);
    const at = Date.UTC(2026, 10, 15);
    await tally.incr('shared', 40, { at });
    await tally.flush();
    const limit = monthly(250);
    const flushing = { on: true };
    const flusher = (async () => {
      while (flushing.on) await tally.flush();
    })();
    const results = await Promise.all(
      tallies.flatMap((client) =>
        Array.from({ length: 120 }, () => client.incr('shared', 1, { at, limit })),
      ),
    );
    flushing.on = false;
    await flusher;
    const applied = results.filter((result) => result.status === 'applied');
    expect(applied).toHaveLength(210);
    expect(results.filter((result) => result.status === 'over-limit')).toHaveLength(150);
    // The applied increments' usages are those of one serial order: 41, 42, ..., 250.
    const usages = applied.map((result) => result.usage ?? 0).sort((a, b) => a - b);
    expect(usages).toEqual(Array.from({ length: 210 }, (_, i) => 41 + i));
    expect(await tally.get('shared')).toBe(250);
  });

  it('stay exact through a Redis kill -9 (AOF always), a wipe and rebuild, and a repair', async () => {
    const { tally, raw, keyPrefix } = await store({ shards: 1 });
    const at = Date.UTC(2026, 10, 15);
    const limit = monthly(20);
    const incr = (by: number) => tally.incr('k', by, { at, limit });
    expect((await incr(8)).status).toBe('applied');
    await tally.flush();
    expect((await incr(4)).usage).toBe(12);

    // kill -9: the AOF (fsync always) keeps the usage with the deltas it sums.
    await redis.kill('SIGKILL');
    await redis.restart();
    expect(await incr(8)).toMatchObject({ status: 'applied', usage: 20 });
    expect((await incr(1)).status).toBe('over-limit');

    // A wipe of the flushed store: the shard is rebuilt, the period seeded from PostgreSQL.
    await tally.flush();
    const keys = await raw.keys(`${keyPrefix}:*`);
    await raw.del(...keys);
    expect(await incr(1)).toMatchObject({ status: 'over-limit', usage: 20 });

    // A repair drops usages summed from a Redis it found wrong: they seed again.
    const shard = shardKeys(keyPrefix, shardOf('k', 1));
    await raw.hset(shard.quotaUsage, `${Date.UTC(2026, 10, 1)},${Date.UTC(2026, 11, 1)}\u001fk`, 0);
    await raw.hincrby(shard.totals, 'k', 5);
    await tally.reconcile({ repair: true });
    expect(await incr(1)).toMatchObject({ status: 'over-limit', usage: 20 });
    expect(await tally.get('k')).toBe(20);
  });

  it('equal a model over random periods, zones, anchors, instants, refunds and flushes', async () => {
    const { tally } = await store({ buckets: ['minute', 'hour', 'day'] });
    const zones = ['UTC', 'Europe/Berlin', 'America/New_York', 'Asia/Kolkata'] as const;
    const from = Date.UTC(2026, 0, 20);
    const span = 120 * 86_400_000;
    const step = fc.record({
      per: fc.constantFrom('day', 'month' as const),
      timeZone: fc.constantFrom(...zones),
      anchorDay: fc.integer({ min: 1, max: 31 }),
      at: fc.integer({ min: from, max: from + span }),
      by: fc.integer({ min: -2, max: 6 }),
      max: fc.integer({ min: 0, max: 12 }),
      soft: fc.boolean(),
      check: fc.boolean(),
      flush: fc.boolean(),
    });
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 30 }), async (steps) => {
        const counter = `m${run++}`;
        const applied: { at: number; by: number }[] = [];
        for (const s of steps) {
          const anchorDay = s.per === 'month' ? s.anchorDay : undefined;
          const limit: LimitOptions = {
            max: s.max,
            per: s.per,
            timeZone: s.timeZone,
            ...(anchorDay === undefined ? {} : { anchorDay }),
            mode: s.soft ? 'soft' : 'hard',
          };
          const period = quotaPeriodOf(
            resolveQuotaPeriod(s.per, s.timeZone, anchorDay, 'model'),
            s.at,
          );
          // Minute buckets: an increment belongs to the period its minute starts in.
          const minute = s.at - (s.at % 60_000);
          const usage = applied
            .filter((a) => a.at >= period.startMs && a.at < period.endMs)
            .reduce((sum, a) => sum + a.by, 0);
          const refused = !s.soft && s.by >= 0 && usage + s.by > s.max;
          const result = await tally.incr(counter, s.by, { at: s.at, limit, check: s.check });
          const passes = !refused;
          expect(result.status).toBe(refused ? 'over-limit' : s.check ? 'allowed' : 'applied');
          const after = passes && !s.check ? usage + s.by : usage;
          expect(result.usage).toBe(after);
          expect(result.resetAt).toEqual(new Date(period.endMs));
          if (passes && !s.check) applied.push({ at: minute, by: s.by });
          if (s.flush) await tally.flush();
        }
      }),
      { numRuns: 25 },
    );
  });

  it("take over a dead seeder's marker once it is 2 s old (Redis' clock), and wait before", async () => {
    const { tally, raw, keyPrefix } = await store({ shards: 1 });
    const at = Date.UTC(2026, 10, 15);
    await tally.incr('s', 3, { at });
    const keys = shardKeys(keyPrefix, 0);
    const field = `${Date.UTC(2026, 10, 1)},${Date.UTC(2026, 11, 1)}\u001fs`;
    // A seeder that died after its first step: its accumulator and its marker, just written.
    const [seconds] = await raw.time();
    await raw.hset(keys.quotaUsage, field, 1_000);
    await raw.hset(keys.quotaPeriods, 's', field.split('\u001f')[0] ?? '');
    await raw.hset(keys.quotaSeeding, field, `dead-seeder|${Number(seconds) * 1000}`);
    const started = Date.now();
    const result = await tally.incr('s', 1, { at, limit: monthly(10) });
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_000);
    expect(result).toMatchObject({ status: 'applied', usage: 4 });
    expect(await raw.hexists(keys.quotaSeeding, field)).toBe(0);
  });

  it('refuse bad limits, and quotas the kept buckets cannot answer, with a typed error', async () => {
    const { tally } = await store({ retention: { hour: '30d', day: null } });
    const at = Date.UTC(2026, 10, 15);
    const bad: [unknown, RegExp][] = [
      [{ max: 1, per: 'week' }, /limit\.per must be one of minute, hour, day, month/],
      [{ max: 1, per: 'month', anchorDay: 0 }, /anchorDay must be a whole number from 1 to 31/],
      [{ max: 1, per: 'day', anchorDay: 3 }, /anchorDay is for monthly periods/],
      [{ max: 1, per: 'day', timeZone: 'Mars/Olympus' }, /not an IANA time zone/],
      [{ max: 1.5, per: 'day' }, /limit\.max must be a whole number/],
      [{ max: 1, per: 'day', every: 2 }, /limit has no property "every"/],
      [{ max: 1, per: 'day', mode: 'lax' }, /limit\.mode must be hard or soft/],
      [{ max: 1, timeZone: 'UTC' }, /need limit\.per/],
      [[1], /limit must be a whole number .* or an object/],
      // Kolkata's midnight is at :30 (UTC+5:30): hour buckets do not start on it.
      [{ max: 1, per: 'day', timeZone: 'Asia/Kolkata' }, /needs buckets that start on its bounds/],
      // A Berlin month is read from hour buckets, kept here 30 days: shorter than a month.
      [
        { max: 1, per: 'month', timeZone: 'Europe/Berlin' },
        /kept only 30 days.*shorter than one period/,
      ],
    ];
    for (const [limit, message] of bad) {
      const error: unknown = await tally
        .incr('v', 1, { at, limit: limit as LimitOptions })
        .catch((caught: unknown) => caught);
      expect(error, JSON.stringify(limit)).toBeInstanceOf(TallyError);
      expect([(error as TallyError).code, (error as TallyError).message]).toEqual([
        'VALIDATION',
        expect.stringMatching(message),
      ]);
    }
    await expect(tally.incr('v', 1, { check: 'yes' as unknown as boolean })).rejects.toMatchObject({
      code: 'VALIDATION',
    });
    expect(await tally.get('v')).toBe(0);
    // A UTC month is read from the day buckets, kept forever here: accepted.
    expect((await tally.incr('v', 1, { at, limit: monthly(5) })).status).toBe('applied');
  });

  it('list at most 16 periods per counter, dropping the one that ends first, which seeds again', async () => {
    const { tally, raw, keyPrefix } = await store({ shards: 1 });
    const keys = shardKeys(keyPrefix, 0);
    const at = Date.UTC(2026, 10, 20);
    for (let anchorDay = 1; anchorDay <= 17; anchorDay++) {
      const result = await tally.incr('many', 1, { at, limit: monthly(100, { anchorDay }) });
      expect([anchorDay, result.status, result.usage]).toEqual([anchorDay, 'applied', anchorDay]);
    }
    const listed = (await raw.hget(keys.quotaPeriods, 'many'))?.split(';') ?? [];
    expect(listed).toHaveLength(16);
    // Anchored on the 1st, the period Nov 1 – Dec 1 ends first: it made room for the 17th.
    expect(listed).not.toContain(`${Date.UTC(2026, 10, 1)},${Date.UTC(2026, 11, 1)}`);
    expect((await tally.incr('many', 0, { at, limit: monthly(100, { anchorDay: 1 }) })).usage).toBe(
      17,
    );
    expect(await tally.get('many')).toBe(17);
  });

  it('keep ended periods for late increments, and drop those no increment can reach', async () => {
    const { tally, raw, keyPrefix } = await store({ shards: 1, maxBackdateMs: 40 * 86_400_000 });
    const keys = shardKeys(keyPrefix, 0);
    const limit = { max: 100, per: 'day' } as const;
    const today = Math.floor(Date.now() / 86_400_000) * 86_400_000;
    const day = (offset: number) => today + offset * 86_400_000;
    await tally.incr('late', 1, { at: day(-1), limit });
    await tally.incr('late', 1, { at: day(0), limit });
    expect(await raw.hget(keys.quotaPeriods, 'late')).toBe(
      `${day(-1)},${day(0)};${day(0)},${day(1)}`,
    );
    // A late increment into yesterday is counted there, its period still whole.
    expect((await tally.incr('late', 1, { at: day(0) - 5, limit })).usage).toBe(2);
    // A period that ended more than the backdating window (40 days) ago goes with the next
    // increment of the counter.
    const ancient = `${day(-42)},${day(-41)}`;
    await raw.hset(
      keys.quotaPeriods,
      'late',
      `${ancient};${day(-1)},${day(0)};${day(0)},${day(1)}`,
    );
    await raw.hset(keys.quotaUsage, `${ancient}\u001flate`, 7);
    await tally.incr('late', 1, { at: day(0) });
    expect(await raw.hget(keys.quotaPeriods, 'late')).toBe(
      `${day(-1)},${day(0)};${day(0)},${day(1)}`,
    );
    expect(await raw.hexists(keys.quotaUsage, `${ancient}\u001flate`)).toBe(0);
  });
});
