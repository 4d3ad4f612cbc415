import pg from 'pg';
import { Redis } from 'ioredis';
import { describe, expect, it, onTestFinished } from 'vitest';
import { createTally, migrate, type TallyOptions } from '../src/index.js';
import { shardOf } from '../src/counters/sharding.js';
import { createDatabase, startRedis, waitFor, type RedisHandle } from './support/index.js';

async function setUp(persistence: 'none' | 'aof-always' = 'none') {
  const redis = await startRedis({ persistence });
  onTestFinished(() => redis.stop());
  const postgres = await createDatabase();
  await migrate(postgres);
  const pool = new pg.Pool({ connectionString: postgres });
  onTestFinished(() => pool.end());
  const options: TallyOptions = { redis: redis.url, postgres, shards: 4, keyPrefix: 'loss' };
  const open = async (extra: Partial<TallyOptions> = {}) => {
    const tally = await createTally({ ...options, ...extra });
    onTestFinished(() => tally.close());
    return tally;
  };
  return { redis, pool, open, options };
}

function rawClient(redis: RedisHandle): Redis {
  const client = new Redis(redis.url);
  onTestFinished(async () => {
    await client.quit();
  });
  return client;
}

describe('Redis comes back empty', () => {
  it('never answers a read without the PostgreSQL base, and rebuilds in the same call', async () => {
    const { redis, open } = await setUp();
    const tally = await open();
    await tally.incr('a', 10);
    await tally.flush();
    await tally.incr('a', 5); // pending, not flushed: lost with Redis' data

    await redis.wipe();

    expect(await tally.get('a')).toBe(10);
    expect((await tally.incr('a', 1)).value).toBe(11);
  });

  it('an increment is the first to notice, and its value includes the base', async () => {
    const { redis, open } = await setUp();
    const tally = await open();
    await tally.incr('a', 10);
    await tally.flush();
    await redis.wipe();
    expect((await tally.incr('a', 2)).value).toBe(12);
    await tally.flush();
    expect(await tally.get('a')).toBe(12);
  });

  it('reconcile reports the loss, check mode changes nothing, repair rebuilds', async () => {
    const { redis, open } = await setUp();
    const tally = await open();
    await tally.incr('a', 10);
    await tally.incr('b', 3);
    await tally.flush();
    await redis.wipe();

    const check = await tally.reconcile();
    expect(check.some((r) => r.redisLostData)).toBe(true);
    const drift = check.flatMap((r) => r.drift).sort((x, y) => (x.counter < y.counter ? -1 : 1));
    expect(drift).toEqual([
      { counter: 'a', redisValue: null, expectedValue: 10 },
      { counter: 'b', redisValue: null, expectedValue: 3 },
    ]);
    expect((await tally.status()).shards.some((s) => !s.totalsValid)).toBe(true);

    const repair = await tally.reconcile({ repair: true });
    expect(repair.filter((r) => r.redisLostData).map((r) => r.repaired)).not.toContain(false);
    expect((await tally.status()).shards.every((s) => s.totalsValid)).toBe(true);
    expect(await tally.reconcile()).toSatisfy((reports: typeof check) =>
      reports.every((r) => r.drift.length === 0 && !r.redisLostData),
    );
    expect(await tally.getMany(['a', 'b'])).toEqual([10, 3]);
  });

  it('a loss a running process rebuilt by itself is reported until a repair reports it', async () => {
    const { redis, open } = await setUp();
    const tally = await open();
    await tally.incr('a', 10);
    await tally.flush();
    await redis.wipe();
    const before = Date.now();
    expect((await tally.incr('a', 1)).value).toBe(11); // notices, rebuilds a's shard, records it
    const shard = shardOf('a', 4);
    const recorded = (reports: Awaited<ReturnType<typeof tally.reconcile>>) =>
      reports.filter((r) => r.lossesFoundAt.length > 0).map((r) => r.shard);

    // a's shard agrees with PostgreSQL again, yet the check still reports its loss, with when.
    // (The other shards, untouched since the wipe, are still found empty now.)
    const check = await tally.reconcile();
    expect(check.flatMap((r) => r.drift)).toEqual([]);
    expect(recorded(check)).toEqual([shard]);
    expect(check.every((r) => r.redisLostData)).toBe(true);
    const [foundAt, ...more] = check[shard]?.lossesFoundAt ?? [];
    expect(more).toEqual([]);
    expect(Date.parse(foundAt ?? '')).toBeGreaterThanOrEqual(before - 1_000);
    expect(recorded(await tally.reconcile())).toEqual([shard]); // a check does not mark it
    const unreported = async () =>
      (await tally.status()).shards.map((s) => s.unreportedRedisLosses);
    expect(await unreported()).toEqual([0, 1, 2, 3].map((s) => (s === shard ? 1 : 0)));

    // Another process's reconcile reports it too (the record is in PostgreSQL); its repair
    // rebuilds the other shards, reporting their losses as well, and marks all reported.
    const other = await open();
    const repair = await other.reconcile({ repair: true });
    expect(repair.map((r) => r.lossesFoundAt.length)).toEqual([1, 1, 1, 1]);
    expect(repair[shard]?.lossesFoundAt).toEqual([foundAt]);
    expect((await tally.reconcile()).filter((r) => r.redisLostData)).toEqual([]);
    expect(await unreported()).toEqual([0, 0, 0, 0]);
  });

  it('reconciles in chunks: every counter, whatever the chunk size', async () => {
    const { redis, open } = await setUp();
    const writer = await open();
    const names = Array.from({ length: 25 }, (_, i) => `n${i}`);
    await Promise.all(names.map((name, i) => writer.incr(name, i + 1)));
    await writer.flush();
    await writer.incr('n0', 100); // pending on top of the flushed base
    await writer.incr('fresh', 7); // only in Redis: never flushed
    await writer.close();

    // Chunks of 3, counters both in PostgreSQL and only in Redis: a drift in each.
    const raw = rawClient(redis);
    for (const key of await raw.keys('loss:*:totals')) {
      for (const field of await raw.hkeys(key)) await raw.hset(key, field, '-1');
    }
    const tally = await open({ reconcileChunkSize: 3 });
    const check = await tally.reconcile();
    expect(check.reduce((n, r) => n + r.countersChecked, 0)).toBe(26);
    expect(check.flatMap((r) => r.drift)).toHaveLength(26);
    await tally.reconcile({ repair: true });
    expect(await tally.getMany([...names, 'fresh'])).toEqual([
      ...names.map((_, i) => i + 1 + (i === 0 ? 100 : 0)),
      7,
    ]);
  });

  it('every createTally rebuilds at start-up', async () => {
    const { redis, open } = await setUp();
    const first = await open();
    await first.incr('a', 7);
    await first.flush();
    await first.close();
    await redis.wipe();

    const second = await open();
    expect((await second.status()).shards.every((s) => s.totalsValid)).toBe(true);
    // Rebuilt before any call touched it: the totals are back in Redis itself.
    const raw = rawClient(redis);
    const totals = await Promise.all(
      (await raw.keys('loss:*:totals')).map((key) => raw.hget(key, 'a')),
    );
    expect(totals.filter((value) => value !== null)).toEqual(['7']);
    expect(await second.get('a')).toBe(7);
  });
});

describe('drift while increments keep flowing', () => {
  it('repair rewrites drifted totals atomically with concurrent increments', async () => {
    const { redis, open } = await setUp();
    const tally = await open();
    await tally.incr('a', 100);
    await tally.flush();
    await tally.incr('a', 1);
    // Corrupt Redis' total behind Tally's back.
    const raw = rawClient(redis);
    const keys = await raw.keys('loss:*:totals');
    for (const key of keys) if ((await raw.hexists(key, 'a')) === 1) await raw.hset(key, 'a', '5');

    const check = await tally.reconcile();
    expect(check.flatMap((r) => r.drift)).toEqual([
      { counter: 'a', redisValue: 5, expectedValue: 101 },
    ]);
    expect(await tally.get('a')).toBe(5); // check mode changed nothing

    const stop = new AbortController();
    let added = 0;
    const load = (async () => {
      while (!stop.signal.aborted) {
        await tally.incr('a', 1);
        added++;
      }
    })();
    const repair = await tally.reconcile({ repair: true });
    stop.abort();
    await load;
    expect(repair.flatMap((r) => r.drift)).toHaveLength(1);
    expect(await tally.get('a')).toBe(101 + added);
    await tally.flush();
    expect(await tally.get('a')).toBe(101 + added);
  });
});

describe('deltas of several buckets', () => {
  it("reconcile and usage sum a counter's pending deltas over every bucket tag", async () => {
    const { redis, open } = await setUp();
    const tally = await open();
    const hour = (h: number) => Date.UTC(2026, 10, 21, h);
    await tally.incr('a', 100, { at: hour(9) });
    await tally.flush();
    // Pending under two tags (10:00 and 11:00): a field each.
    await tally.incr('a', 2, { at: hour(10) });
    await tally.incr('a', 3, { at: hour(11) });
    const raw = rawClient(redis);
    for (const key of await raw.keys('loss:*:totals')) {
      if ((await raw.hexists(key, 'a')) === 1) await raw.hset(key, 'a', '5');
    }

    const repair = await tally.reconcile({ repair: true });
    expect(repair.flatMap((r) => r.drift)).toEqual([
      { counter: 'a', redisValue: 5, expectedValue: 105 },
    ]);
    const usage = async () =>
      (await tally.usage('a', { from: hour(9), to: hour(12), granularity: 'hour' })).map(
        (bucket) => bucket.value,
      );
    expect(await usage()).toEqual([100, 2, 3]);
    await tally.flush();
    expect(await tally.get('a')).toBe(105);
    expect(await usage()).toEqual([100, 2, 3]);
    expect(
      (await tally.usage('a', { from: hour(0), to: hour(1), granularity: 'day' }))[0]?.value,
    ).toBe(105);
  });
});

describe('reconcile of the whole store', () => {
  it('checks shards side by side; a failure is reported once every shard under way is done', async () => {
    const { redis, open } = await setUp();
    // The lock wait is one TTL: a shard whose lock someone else holds fails after 100 ms.
    const tally = await open({ flushLockTtlMs: 100 });
    // Shard 0 gets enough counters to take longer than that.
    const names = Array.from({ length: 400_000 }, (_, i) => `slow-${i}`).filter(
      (name) => shardOf(name, 4) === 0,
    );
    for (let i = 0; i < names.length; i += 10_000) {
      await tally.incrMany(names.slice(i, i + 10_000).map((counter) => ({ counter })));
    }
    await tally.flush();
    const raw = rawClient(redis);
    await raw.set('loss:{2}:lock', 'another process', 'PX', 60_000);

    const reported: number[] = [];
    await expect(
      tally.reconcile({ onShard: (report) => reported.push(report.shard) }),
    ).rejects.toMatchObject({ code: 'BUSY' });
    // Shard 0 was still being checked when shard 2 gave up; the call waited for it, and no
    // lock of this process is left behind.
    expect(reported.sort()).toEqual([0, 1, 3]);
    expect(await raw.keys('loss:*:lock')).toEqual(['loss:{2}:lock']);
  });
});

describe('start-up checks', () => {
  it('refuses a shard count other than the one the store was set up with', async () => {
    const { open } = await setUp();
    await (await open()).close();
    await expect(open({ shards: 8 })).rejects.toMatchObject({
      code: 'CONFIGURATION',
      message: expect.stringMatching(/set up with 4 shards/) as unknown,
    });
  });

  it('states the loss bound, and redisLossAccepted refuses a Redis that could lose increments', async () => {
    const plain = await setUp('none');
    await expect(plain.open({ redisLossAccepted: 'none' })).rejects.toMatchObject({
      code: 'NOT_DURABLE',
    });
    const loose = await plain.open();
    expect(loose.durability).toMatchObject({ appendonly: false, durable: false });
    expect(loose.durability.lossBound).toMatch(/no AOF/);

    const durable = await setUp('aof-always');
    const tally = await durable.open({ redisLossAccepted: 'none', durabilityCheckIntervalMs: 100 });
    expect(tally.durability).toMatchObject({
      appendonly: true,
      appendfsync: 'always',
      maxmemoryPolicy: 'noeviction',
      durable: true,
      waitaof: false, // Redis 7.0 here has no WAITAOF; detected, not assumed
    });

    expect(tally.durability).toMatchObject({ accepted: true, problem: null });

    // A live change is noticed by a running process, and refused at the next start-up, even
    // by the library's default ('bounded': eviction is never a bounded loss).
    await rawClient(durable.redis).config('SET', 'maxmemory-policy', 'allkeys-lru');
    await waitFor('the live setting', () => (tally.durability.accepted ? undefined : true));
    expect(tally.durability.problem).toMatch(/maxmemory-policy is allkeys-lru/);
    expect((await tally.status()).redis.accepted).toBe(false);
    for (const accepted of ['none', 'bounded'] as const) {
      await expect(durable.open({ redisLossAccepted: accepted })).rejects.toMatchObject({
        code: 'NOT_DURABLE',
        message: expect.stringMatching(/may evict idempotency keys/) as unknown,
      });
    }
    await (await durable.open({ redisLossAccepted: 'any' })).close();
  });

  it('Redis out of memory: the increment is refused, not acknowledged, nothing applied', async () => {
    const { redis, open } = await setUp();
    const tally = await open();
    await tally.incr('a', 1);
    const raw = rawClient(redis);
    await raw.config('SET', 'maxmemory', '1');
    await expect(tally.incr('a', 1)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    await raw.config('SET', 'maxmemory', '0');
    expect(await tally.get('a')).toBe(1);
  });
});
