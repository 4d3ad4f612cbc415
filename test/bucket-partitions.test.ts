import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { loadMigrations, migrate, ValidationError, type TallyOptions } from '../src/index.js';
import { partitionRange } from '../src/store/partition-layout.js';
import { createDatabase, startRedis, waitFor, type RedisHandle } from './support/index.js';
import { tallyOn } from './support/tally-store.js';
import { startWorker } from './support/tally-process.js';
import { pauseQueriesAfterSnapshot } from './support/query-pause.js';
import { shardOf } from '../src/counters/sharding.js';
import { bucketStart, granularities, type Granularity } from '../src/counters/buckets.js';

let redis: RedisHandle;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});

const dayMs = 86_400_000;
const keepAll = { minute: null, hour: null, day: null, month: null };

/**
 * A database of its own, a pool on it, and Tally clients on it closed with the test (each
 * migrates it). `upgradedFrom`: the database is left at that schema version until then, as a
 * store of an older version is.
 */
async function store(upgradedFrom?: number) {
  const url = await createDatabase();
  const pool = new pg.Pool({ connectionString: url });
  onTestFinished(() => pool.end());
  if (upgradedFrom !== undefined) {
    const older = (await loadMigrations()).filter((m) => m.version <= upgradedFrom);
    await migrate(url, { migrations: older });
  }
  const keyPrefix = `b${randomBytes(4).toString('hex')}`;
  const tally = async (options: Partial<TallyOptions>) => {
    const client = await tallyOn(redis.url, url, { shards: 2, keyPrefix, ...options });
    onTestFinished(() => client.close());
    return client;
  };
  return { url, pool, tally };
}
type Store = Awaited<ReturnType<typeof store>>;

/** A writer keeping minute buckets forever, with 5 counted two days ago and 7 now, flushed. */
async function minutesOfTwoDays(tally: Store['tally'], buckets: Granularity[]) {
  const now = Date.now();
  const writer = await tally({ buckets, retention: keepAll, maxBackdateMs: 3 * dayMs });
  await writer.maintainBuckets();
  await writer.incr('calls', 5, { at: now - 2 * dayMs });
  await writer.incr('calls', 7, { at: now });
  await writer.flush();
  return { writer, now };
}

/** The range partitions attached to a granularity's table, by name. */
async function partitionsOf(pool: pg.Pool, granularity: string): Promise<string[]> {
  const { rows } = await pool.query<{ name: string }>(
    `SELECT c.relname AS name FROM pg_inherits i
     JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
     WHERE p.relname = $1 AND NOT c.relpartbound IS NULL AND c.relname <> $2 ORDER BY 1`,
    [`counter_buckets_${granularity}`, `counter_buckets_${granularity}_default`],
  );
  return rows.map((row) => row.name);
}

async function rowsIn(pool: pg.Pool, table: string): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(
    `SELECT count(*)::integer AS n FROM tally.${pg.escapeIdentifier(table)}`,
  );
  return rows[0]?.n ?? -1;
}

describe('bucket partitions', () => {
  it('exist for every bucket an increment may be dated in before any flush writes one', async () => {
    const { pool, tally } = await store();
    const now = Date.now();
    const client = await tally({
      buckets: ['minute', 'hour', 'day', 'month'],
      maxBackdateMs: 35 * dayMs,
      retention: { minute: '7d', hour: '90d', day: '3y', month: null },
    });
    const report = await client.maintainBuckets();
    expect(report).toMatchObject({ busy: false, dropped: 0, deferred: 0, moving: false });
    // Minute buckets by day: the 7 days kept, today, and tomorrow (the next range).
    const minutes = await partitionsOf(pool, 'minute');
    expect(minutes).toContain(partitionRange('minute', now - 7 * dayMs).table);
    expect(minutes).toContain(partitionRange('minute', now + dayMs).table);
    expect(minutes).not.toContain(partitionRange('minute', now - 8 * dayMs).table);
    // Month buckets are kept forever: from the oldest date an increment may carry.
    expect(await partitionsOf(pool, 'month')).toContain(
      partitionRange('month', now - 35 * dayMs).table,
    );
    expect(report.created).toBe(
      (
        await Promise.all(['minute', 'hour', 'day', 'month'].map((g) => partitionsOf(pool, g)))
      ).flat().length,
    );

    const dates = [now - 7 * dayMs + 60_000, now - 3 * dayMs, now];
    for (const at of dates) await client.incr('calls', 2, { at });
    await client.flush();
    let buckets = 0;
    for (const granularity of granularities) {
      expect(await rowsIn(pool, `counter_buckets_${granularity}_default`)).toBe(0);
      buckets += new Set(dates.map((at) => bucketStart(granularity, at))).size;
    }
    expect(await rowsIn(pool, 'counter_buckets')).toBe(buckets);
    // A second run finds everything in place.
    expect(await client.maintainBuckets()).toMatchObject({ created: 0, dropped: 0, deleted: 0 });
  });

  it('keeps a row whose range is missing in the default partition, then moves it into its range', async () => {
    const { pool, tally } = await store();
    const client = await tally({
      buckets: ['minute', 'day'],
      retention: keepAll,
      maxBackdateMs: 5 * dayMs,
    });
    // Flushed before any upkeep ran (a store no worker maintains): no range exists yet.
    const at = Math.floor((Date.now() - 4 * dayMs) / 60_000) * 60_000;
    await client.incr('calls', 5, { at });
    await client.flush();
    expect(await rowsIn(pool, 'counter_buckets_minute_default')).toBe(1);
    const usage = { from: at, to: at + 60_000, granularity: 'minute' as const };
    expect(await client.usage('calls', usage)).toEqual([{ start: new Date(at), value: 5 }]);

    await client.maintainBuckets();
    expect(await rowsIn(pool, 'counter_buckets_minute_default')).toBe(0);
    expect(await rowsIn(pool, partitionRange('minute', at).table)).toBe(1);
    expect(await client.usage('calls', usage)).toEqual([{ start: new Date(at), value: 5 }]);
  });

  it('drops ranges past the retention, and refuses reads before them even once the retention is lengthened', async () => {
    const { pool, tally } = await store();
    const { writer, now } = await minutesOfTwoDays(tally, ['minute', 'day']);
    const old = partitionRange('minute', now - 2 * dayMs);
    expect(await rowsIn(pool, old.table)).toBe(1);
    // A stray row in the default partition from before the retention goes too.
    await pool.query(
      `INSERT INTO tally.counter_buckets_minute_default VALUES ('stray', 'minute', $1, 1)`,
      [new Date(partitionRange('minute', now - 10 * dayMs).startMs)],
    );

    const pruner = await tally({
      buckets: ['minute', 'day'],
      retention: { ...keepAll, minute: '1d' },
    });
    const report = await pruner.maintainBuckets();
    expect(report.dropped).toBeGreaterThanOrEqual(2); // 2 and 3 days ago (and 1, before 00:00 UTC)
    expect(report.deleted).toBe(1);
    expect(await partitionsOf(pool, 'minute')).not.toContain(old.table);
    const { rows } = await pool.query<{ n: number }>(
      `SELECT count(*)::integer AS n FROM pg_class WHERE relname = $1`,
      [old.table],
    );
    expect(rows[0]?.n).toBe(0); // dropped, not only detached
    const { buckets } = await pruner.status();
    expect(buckets?.prunedBefore.minute?.getTime()).toBeGreaterThanOrEqual(old.endMs);

    // A run killed between detaching a range and dropping it leaves the table: the next drops it.
    const orphan = partitionRange('minute', now - 30 * dayMs).table;
    await pool.query(`CREATE TABLE tally.${orphan} (LIKE tally.counter_buckets)`);
    await pruner.maintainBuckets();
    const left = await pool.query(`SELECT 1 FROM pg_class WHERE relname = $1`, [orphan]);
    expect(left.rowCount).toBe(0);
    // One the horizon does not cover was not detached by the upkeep: someone else's, kept.
    const foreign = partitionRange('minute', now + 10 * dayMs).table;
    await pool.query(`CREATE TABLE tally.${foreign} (LIKE tally.counter_buckets)`);
    await pruner.maintainBuckets();
    const kept = await pool.query(`SELECT 1 FROM pg_class WHERE relname = $1`, [foreign]);
    expect(kept.rowCount).toBe(1);
    expect(await rowsIn(pool, 'counter_buckets_minute_default')).toBe(0);

    // The writer still keeps minutes forever, but they were pruned: refused, not a silent 0.
    const from = now - 2 * dayMs - 60_000;
    const read = { from, to: from + 120_000, granularity: 'minute' as const };
    await expect(writer.usage('calls', read)).rejects.toThrow(
      /holds no complete minute buckets before/,
    );
    await expect(
      writer.query({ counter: 'calls', from, to: now, granularity: 'total' }),
    ).rejects.toBeInstanceOf(ValidationError);
    // Past the horizon, and in the day buckets, nothing was lost.
    const day = { from: now - 3 * dayMs, to: now + 60_000, granularity: 'day' as const };
    const days = await pruner.usage('calls', day);
    expect(days.reduce((sum, bucket) => sum + bucket.value, 0)).toBe(12);
    const recent = await writer.usage('calls', {
      from: now - 60_000,
      to: now + 60_000,
      granularity: 'minute',
    });
    expect(recent.reduce((sum, bucket) => sum + bucket.value, 0)).toBe(7);
  });

  it('answers a usage query from its snapshot even when a range is dropped while it runs', async () => {
    const { pool, tally } = await store();
    const { writer, now } = await minutesOfTwoDays(tally, ['minute']);
    const pruner = await tally({ buckets: ['minute'], retention: { ...keepAll, minute: '1d' } });

    // The query stops for 3 s after taking its snapshot, before it reads the buckets.
    const paused = pauseQueriesAfterSnapshot(3_000);
    const from = Math.floor((now - 2 * dayMs) / 60_000) * 60_000;
    const to = Math.floor(now / 60_000) * 60_000 + 60_000;
    const query = writer.query({ prefix: 'calls', from, to, granularity: 'total' });
    await paused.held(pool);
    // Its snapshot holds both increments: dropping the range under it would lose one.
    const [{ rows }, report] = await Promise.all([query, pruner.maintainBuckets()]);
    expect(rows.map((row) => row.value)).toEqual([12]);
    expect(report.dropped).toBeGreaterThanOrEqual(1); // after the query, on a later attempt
  });

  it('gives up a drop that waits past the lock timeout and drops it on a later run', async () => {
    const { pool, url, tally } = await store();
    const now = Date.now();
    const writer = await tally({
      buckets: ['minute'],
      retention: keepAll,
      maxBackdateMs: 3 * dayMs,
    });
    await writer.maintainBuckets();
    const pruner = await tally({ buckets: ['minute'], retention: { ...keepAll, minute: '1d' } });

    // A long read holds the minute buckets: the detach must not wait for it (flushes would
    // queue behind the waiting detach).
    const reader = new pg.Client({ connectionString: url });
    await reader.connect();
    onTestFinished(() => reader.end());
    await reader.query('BEGIN');
    await reader.query('SELECT count(*) FROM tally.counter_buckets_minute');
    const held = await pruner.maintainBuckets();
    expect(held.deferred).toBeGreaterThanOrEqual(2);
    expect(held.dropped).toBe(0);
    expect(await partitionsOf(pool, 'minute')).toContain(
      partitionRange('minute', now - 2 * dayMs).table,
    );
    await reader.query('COMMIT');

    const freed = await pruner.maintainBuckets();
    expect(freed.dropped).toBe(held.deferred);
    expect(await partitionsOf(pool, 'minute')).not.toContain(
      partitionRange('minute', now - 2 * dayMs).table,
    );
  });

  it('moves an upgraded store’s rows into the partitions while reads stay exact, then drops the old table', async () => {
    const { pool, tally } = await store(5);
    const now = Date.now();
    const hour = 3_600_000;
    // 12,000 counters with an hour bucket an hour ago, and one an hour bucket 200 days ago.
    const recent = Math.floor((now - hour) / hour) * hour;
    await pool.query(
      `INSERT INTO tally.counter_buckets
       SELECT 'c' || i, 'hour', to_timestamp($1 / 1000.0), i FROM generate_series(1, 12000) i`,
      [recent],
    );
    const names = Array.from({ length: 12_000 }, (_, i) => `c${i + 1}`);
    await pool.query(
      `INSERT INTO tally.counters (name, shard, value)
       SELECT name, shard, 0 FROM unnest($1::text[], $2::integer[]) AS c(name, shard)`,
      [names, names.map((name) => shardOf(name, 2))],
    );
    const ancient = Math.floor((now - 200 * dayMs) / hour) * hour;
    await pool.query(
      `INSERT INTO tally.counter_buckets VALUES ('c1', 'hour', to_timestamp($1 / 1000.0), 1000)`,
      [ancient],
    );
    const client = await tally({
      buckets: ['hour'],
      retention: { ...keepAll, hour: '90d' },
      maxBackdateMs: 35 * dayMs,
    });
    const read = { from: recent, to: recent + hour, granularity: 'hour' as const };
    // A flush into a bucket still held by the old table: the reads add the two up.
    await client.incr('c7', 3, { at: recent + 1 });
    await client.flush();
    expect(await client.usage('c7', read)).toEqual([{ start: new Date(recent), value: 10 }]);
    const total = { prefix: 'c', from: recent, to: recent + hour, granularity: 'total' as const };
    const sum = async () => {
      let summed = 0;
      for await (const row of client.queryStream(total)) summed += row.value;
      return summed;
    };
    const expected = (12_000 * 12_001) / 2 + 3;
    expect(await sum()).toBe(expected);

    expect((await client.status()).buckets?.moving).toBe(true);
    // A stopping process (its signal aborted) starts no step: rows and ranges wait for a
    // later run.
    const stopping = new AbortController();
    stopping.abort();
    expect(await client.maintainBuckets({ signal: stopping.signal })).toMatchObject({
      created: 0,
      moved: 0,
      deferred: 0,
    });
    expect(await partitionsOf(pool, 'hour')).toEqual([]);
    const report = await client.maintainBuckets();
    expect(report).toMatchObject({ moved: 12_000, deleted: 1, moving: false, busy: false });
    expect((await client.status()).buckets?.moving).toBe(false);
    const { rows } = await pool.query<{ old: string | null }>(
      `SELECT to_regclass('tally.counter_buckets_unpartitioned')::text AS old`,
    );
    expect(rows[0]?.old).toBeNull();
    expect(await client.usage('c7', read)).toEqual([{ start: new Date(recent), value: 10 }]);
    expect(await sum()).toBe(expected);
    expect(await rowsIn(pool, 'counter_buckets_hour_default')).toBe(0);
    // The row past the retention went, and the horizon says so.
    const horizon = await pool.query<{ ms: string }>(
      `SELECT (extract(epoch FROM pruned_before) * 1000)::bigint AS ms FROM tally.bucket_horizons
       WHERE granularity = 'hour'`,
    );
    expect(Number(horizon.rows[0]?.ms)).toBeGreaterThan(ancient);
  });

  it('loses nothing and counts nothing twice while flushes write the buckets being moved', async () => {
    const { pool, tally } = await store(5);
    const now = Date.now();
    // 30,000 rows to move: 100 counters × the last 300 minutes, 1 each.
    const first = Math.floor(now / 60_000) * 60_000 - 300 * 60_000;
    await pool.query(
      `INSERT INTO tally.counter_buckets
       SELECT 'c' || (i % 100), 'minute', to_timestamp(($1::bigint + (i / 100) * 60000) / 1000.0), 1
       FROM generate_series(0, 29999) i`,
      [first],
    );
    const client = await tally({
      buckets: ['minute'],
      retention: { ...keepAll, minute: '7d' },
      maxBackdateMs: 7 * dayMs,
    });

    // Increments into the same minutes while the upkeep moves them, flushed as they come.
    const writes = { on: true };
    let acknowledged = 0;
    const writer = (async () => {
      for (let i = 0; writes.on; i++) {
        await client.incr(`c${i % 100}`, 1, { at: first + (i % 300) * 60_000 });
        acknowledged++;
        if (i % 50 === 0) await client.flush();
      }
    })();
    let moving = true;
    for (let runs = 0; moving && runs < 100; runs++) {
      ({ moving } = await client.maintainBuckets());
    }
    writes.on = false;
    await writer;
    await client.flush();
    expect(moving).toBe(false);
    expect(acknowledged).toBeGreaterThan(0);
    const { rows } = await pool.query<{ value: string; rows: string }>(
      `SELECT sum(value)::text AS value, count(*)::text AS rows FROM tally.counter_bucket_rows`,
    );
    expect(Number(rows[0]?.value)).toBe(30_000 + acknowledged);
    expect(Number(rows[0]?.rows)).toBe(30_000); // one row per bucket: moved rows were merged
  });

  it('refuses reads from a granularity added later of the periods before it was added', async () => {
    const { tally } = await store();
    const now = Date.now();
    const dayOnly = await tally({ buckets: ['day'], retention: keepAll });
    await dayOnly.incr('calls', 5, { at: now - 2 * dayMs });
    await dayOnly.flush();
    const withHours = await tally({ buckets: ['hour', 'day'], retention: keepAll });
    const hourFrom = Math.floor((now - 2 * dayMs) / 3_600_000) * 3_600_000;
    // Its hour buckets hold nothing from before it was added: not a 0, a refusal.
    await expect(
      withHours.usage('calls', { from: hourFrom, to: hourFrom + 3_600_000, granularity: 'hour' }),
    ).rejects.toThrow(/holds no complete hour buckets before .*not kept yet/);
    await expect(
      withHours.query({ counter: 'calls', from: hourFrom, to: now, granularity: 'total' }),
    ).rejects.toBeInstanceOf(ValidationError);
    // Whole days still read from the day buckets, kept all along.
    const dayFrom = Math.floor((now - 2 * dayMs) / dayMs) * dayMs;
    const days = await withHours.usage('calls', {
      from: dayFrom,
      to: dayFrom + dayMs,
      granularity: 'day',
    });
    expect(days).toEqual([{ start: new Date(dayFrom), value: 5 }]);
    // A process keeping fewer (a CLI run without TALLY_BUCKETS) takes nothing off the record:
    // the hours are not started over when the next one keeps them.
    const addedAt = (await withHours.status()).buckets?.prunedBefore.hour;
    expect(addedAt).toBeInstanceOf(Date);
    await tally({ buckets: ['day'], retention: keepAll });
    const again = await tally({ buckets: ['hour', 'day'], retention: keepAll });
    expect((await again.status()).buckets?.prunedBefore.hour).toEqual(addedAt);
    // A report on the store as it is (tally status: no rebuild) records nothing either.
    await tally({ buckets: ['minute', 'hour', 'day'], retention: keepAll, rebuildAtStart: false });
    expect((await again.status()).buckets?.prunedBefore.minute).toBeUndefined();

    // The hour it was added in began before: incomplete too, so refused as well.
    await withHours.incr('calls', 2);
    const hour = Math.floor(Date.now() / 3_600_000) * 3_600_000;
    const read = { from: hour, to: hour + 3_600_000, granularity: 'hour' as const };
    await expect(withHours.usage('calls', read)).rejects.toBeInstanceOf(ValidationError);
  });

  it('finishes a move exactly after the worker moving it is killed (kill -9) in the middle', async () => {
    const { pool, url } = await store(5);
    // 200,000 hour rows: 1,000 counters over 200 hours of 80 days ago, before the ranges a
    // flush may write (35 days) but inside the retention (90): 40 batches of 5,000.
    const hour = 3_600_000;
    const first = Math.floor(Date.now() / hour) * hour - 1_920 * hour;
    await pool.query(
      `INSERT INTO tally.counter_buckets
       SELECT 'c' || (i % 1000), 'hour', to_timestamp(($1::bigint + (i / 1000) * 3600000) / 1000.0), i % 7
       FROM generate_series(0, 199999) i`,
      [first],
    );
    const sums = async (table: string) => {
      const { rows } = await pool.query<{ value: string; n: string }>(
        `SELECT sum(value)::text AS value, count(*)::text AS n FROM tally.${table}`,
      );
      return rows[0];
    };
    const expected = await sums('counter_buckets');
    await migrate(url);
    const env = {
      REDIS_URL: redis.url,
      DATABASE_URL: url,
      TALLY_KEY_PREFIX: `k${randomBytes(4).toString('hex')}`,
      TALLY_SHARDS: '2',
      TALLY_LOG_LEVEL: 'info',
      TALLY_ACCEPT_REDIS_LOSS: 'any',
    };
    const killed = startWorker(env);
    onTestFinished(() => {
      killed.kill('SIGKILL');
    });
    // Killed once some rows have moved and others have not.
    await waitFor(
      'some rows moved',
      async () => {
        const left = await sums('counter_buckets_unpartitioned');
        return left !== undefined && Number(left.n) < 200_000 ? true : undefined;
      },
      { timeoutMs: 60_000 },
    );
    killed.kill('SIGKILL');
    await killed.exited;
    const left = await sums('counter_buckets_unpartitioned');
    expect(Number(left?.n)).toBeGreaterThan(0); // the kill fell in the middle

    const restarted = startWorker(env);
    onTestFinished(async () => {
      restarted.kill('SIGTERM');
      await restarted.exited;
    });
    await restarted.waitForLog(
      'the end of the move',
      (line) => line.msg?.startsWith("the upgraded store's bucket rows are all in") === true,
      60_000,
    );
    expect(await sums('counter_bucket_rows')).toEqual(expected);
    expect(await sums('counter_buckets')).toEqual(expected);
    expect(await rowsIn(pool, 'counter_buckets_hour_default')).toBe(0);
  });

  it('goes on with its other steps when one keeps failing, and says so', async () => {
    const { pool, tally } = await store();
    const client = await tally({
      buckets: ['minute', 'hour'],
      retention: keepAll,
      maxBackdateMs: 2 * dayMs,
    });
    // Someone's table holds the name of tomorrow's minute range: that create fails every run.
    const now = Date.now();
    const taken = partitionRange('minute', now + dayMs).table;
    await pool.query(`CREATE TABLE tally.${taken} (LIKE tally.counter_buckets)`);
    await expect(client.maintainBuckets()).rejects.toThrow(/bucket partitions/);
    // The other ranges were made all the same.
    expect(await partitionsOf(pool, 'minute')).toContain(partitionRange('minute', now).table);
    expect(await partitionsOf(pool, 'hour')).toContain(partitionRange('hour', now).table);
    expect(await partitionsOf(pool, 'minute')).not.toContain(taken);
  });

  it('keeps at most 64 ranges of a granularity writable, however far back increments may go', async () => {
    const { pool, tally } = await store();
    // Minutes kept forever, ten years of backdating: 3,650 day-wide ranges if all were made.
    const client = await tally({ buckets: ['minute'], retention: keepAll });
    await client.maintainBuckets();
    const minutes = await partitionsOf(pool, 'minute');
    expect(minutes).toHaveLength(64);
    expect(minutes).toContain(partitionRange('minute', Date.now() + dayMs).table);
    // An increment dated before them is kept in the default partition and read.
    const at = Math.floor((Date.now() - 400 * dayMs) / 60_000) * 60_000;
    await client.incr('calls', 3, { at });
    await client.flush();
    expect(await rowsIn(pool, 'counter_buckets_minute_default')).toBe(1);
    const read = { from: at, to: at + 60_000, granularity: 'minute' as const };
    expect(await client.usage('calls', read)).toEqual([{ start: new Date(at), value: 3 }]);
  });
});
