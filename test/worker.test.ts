import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import { createTally, migrate, type Tally } from '../src/index.js';
import {
  createDatabase,
  startPostgres,
  startRedis,
  waitFor,
  type RedisHandle,
} from './support/index.js';
import { startWorker, type TallyProcess } from './support/tally-process.js';
import { postgresTotals } from './support/tally-store.js';

const intervalMs = 200;

interface Store {
  redis: RedisHandle;
  databaseUrl: string;
  tally: Tally;
  pool: pg.Pool;
  env: Record<string, string>;
  acknowledged: Map<string, number>;
  increment(count: number): Promise<void>;
  postgresTotals(): Promise<Map<string, number>>;
}

async function store(
  options: { persistence?: 'none' | 'aof-always'; databaseUrl?: string } = {},
): Promise<Store> {
  const redis = await startRedis({ persistence: options.persistence ?? 'aof-always' });
  onTestFinished(() => redis.stop());
  const databaseUrl = options.databaseUrl ?? (await createDatabase());
  await migrate(databaseUrl);
  const keyPrefix = `w${randomBytes(4).toString('hex')}`;
  const tally = await createTally({
    redis: redis.url,
    postgres: databaseUrl,
    shards: 4,
    keyPrefix,
  });
  onTestFinished(() => tally.close());
  const pool = new pg.Pool({ connectionString: databaseUrl });
  pool.on('error', () => undefined);
  onTestFinished(() => pool.end());
  const acknowledged = new Map<string, number>();
  let next = 0;
  return {
    redis,
    databaseUrl,
    tally,
    pool,
    acknowledged,
    env: {
      REDIS_URL: redis.url,
      DATABASE_URL: databaseUrl,
      TALLY_SHARDS: '4',
      TALLY_KEY_PREFIX: keyPrefix,
      TALLY_FLUSH_INTERVAL_MS: String(intervalMs),
      ...(redis.persistence === 'aof-always' ? {} : { TALLY_ACCEPT_REDIS_LOSS: 'bounded' }),
    },
    async increment(count) {
      for (let i = 0; i < count; i++) {
        const counter = `c${next++ % 10}`;
        await tally.incr(counter, 1);
        acknowledged.set(counter, (acknowledged.get(counter) ?? 0) + 1);
      }
    },
    postgresTotals: () => postgresTotals(pool),
  };
}

function worker(env: Record<string, string>): TallyProcess {
  const started = startWorker(env);
  onTestFinished(async () => {
    started.kill('SIGKILL');
    await started.exited;
  });
  return started;
}

async function drained(s: Store, timeoutMs = 20_000): Promise<void> {
  await waitFor(
    'PostgreSQL to hold every acknowledged increment',
    async () => {
      const totals = await s.postgresTotals();
      for (const [counter, value] of s.acknowledged) if (totals.get(counter) !== value) return;
      return true;
    },
    { timeoutMs },
  );
  expect(await s.postgresTotals()).toEqual(s.acknowledged);
}

describe('tally worker', () => {
  it('flushes on schedule, serves metrics and health, and on SIGTERM finishes its flush and exits 0', async () => {
    const s = await store();
    const w = worker({
      ...s.env,
      TALLY_METRICS_PORT: '0',
      // Every flush with data stalls 1.5 s inside its transaction: SIGTERM lands mid-flush.
      TALLY_FAULT_DELAY: 'mid-transaction:1500',
    });
    const port = await w.metricsPort();
    const health = await fetch(`http://127.0.0.1:${port}/healthz`);
    expect(health.status).toBe(200);

    await s.increment(50);
    await waitFor(
      'a batch in flight',
      async () =>
        (await s.tally.status()).shards.some((shard) => shard.inflightBatch !== null) || undefined,
    );
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    for (const name of [
      'tally_flush_duration_seconds',
      'tally_flush_batches_total',
      'tally_flush_counters_total',
      'tally_flush_failures_total',
      'tally_pending_deltas{shard="0"}',
      'tally_flush_lag_seconds{shard="0"}',
      'tally_redis_losses_unreported{shard="0"} 0',
      'tally_inflight_batches',
    ]) {
      expect(metrics).toContain(name);
    }
    expect(metrics).toMatch(/^tally_inflight_batches [1-9]/m);

    w.kill('SIGTERM');
    expect(await w.exited).toEqual({ code: 0, signal: null });
    expect(w.logs.some((line) => line.msg === 'flush worker stopped')).toBe(true);
    // The signal arrived mid-flush: a flush ended after it.
    const signalAt = w.logs.findIndex((line) => line.msg === 'shutting down');
    expect(signalAt).toBeGreaterThan(-1);
    expect(w.logs.slice(signalAt).some((line) => line.event === 'flush-end')).toBe(true);
    // The flushes in progress were finished, not abandoned: no batch is left in flight.
    const status = await s.tally.status();
    expect(status.shards.every((shard) => shard.inflightBatch === null)).toBe(true);
    // Shards whose turn had not come are still pending; flushing them now must not find
    // anything applied twice or missing.
    await s.tally.flush();
    await drained(s);
  });

  it('a second signal, or the shutdown timeout, exits at once, and nothing is lost', async () => {
    const s = await store();
    // Flushes stall 5 s mid-transaction; a dead worker's shard lock expires after 1 s.
    const stalled = { TALLY_FAULT_DELAY: 'mid-transaction:5000', TALLY_FLUSH_LOCK_TTL_MS: '1000' };
    const inFlight = () =>
      waitFor(
        'a batch in flight',
        async () =>
          (await s.tally.status()).shards.some((shard) => shard.inflightBatch !== null) ||
          undefined,
      );

    const impatient = worker({ ...s.env, ...stalled });
    await s.increment(20);
    await inFlight();
    impatient.kill('SIGTERM');
    await impatient.waitForLog('shutdown', (l) => l.msg === 'shutting down');
    const secondAt = Date.now();
    impatient.kill('SIGINT');
    expect((await impatient.exited).code).toBe(1);
    expect(Date.now() - secondAt).toBeLessThan(4_000); // did not wait for the stalled flush
    await s.tally.flush(); // finishes the batch it left, so the next wait sees a new one

    const bounded = worker({ ...s.env, ...stalled, TALLY_SHUTDOWN_TIMEOUT_MS: '300' });
    await bounded.waitForLog('start-up', (l) => l.msg === 'flush worker started');
    await s.increment(20);
    await inFlight();
    const termAt = Date.now();
    bounded.kill('SIGTERM');
    expect((await bounded.exited).code).toBe(1);
    expect(Date.now() - termAt).toBeLessThan(4_000);
    expect(bounded.logs.some((l) => l.msg === 'shutdown timed out: exiting now')).toBe(true);

    // Both died mid-flush; the batches they left are finished by the next flush.
    await s.tally.flush();
    await drained(s);
  });

  it('keeps running while PostgreSQL is down for 10 intervals, then drains the lag', async () => {
    const cluster = await startPostgres();
    onTestFinished(() => cluster.destroy());
    const s = await store({ databaseUrl: await cluster.createDatabase() });
    const w = worker(s.env);
    await s.increment(20);
    await drained(s);

    await cluster.stop('immediate');
    // Ten flush failures in a row, increments arriving all along: the worker rides them out.
    const failures = () => w.logs.filter((l) => l.msg?.startsWith('flush failed') === true).length;
    const before = failures();
    await waitFor(
      'ten flush failures',
      async () => {
        await s.increment(1);
        return failures() - before >= 10 || undefined;
      },
      { timeoutMs: 30_000 },
    );
    const failure = await w.waitForLog(
      'a flush failure',
      (l) => l.msg?.startsWith('flush failed') === true,
    );
    expect(failure).toMatchObject({ cause: 'UNAVAILABLE', attempt: expect.any(Number) as unknown });
    expect(typeof failure.shard).toBe('number');

    await cluster.start();
    await drained(s);
    const lagMs = Math.max(...(await s.tally.status()).shards.map((x) => x.oldestUnflushedAgeMs));
    expect(lagMs).toBeLessThan(2 * intervalMs);
    // Still the same process: it never crashed.
    expect(w.logs.some((line) => line.msg === 'flush worker stopped')).toBe(false);
    await expect(Promise.race([w.exited, Promise.resolve('running')])).resolves.toBe('running');
  });

  it('prunes the flush ledger past TALLY_LEDGER_RETENTION_MS on its interval, and counts it', async () => {
    const s = await store();
    await s.pool.query(
      `INSERT INTO tally.applied_batches (shard, batch_id, counters, applied_at)
       SELECT g % 4, 'old-' || g, 1, now() - interval '2 days' FROM generate_series(1, 1000) AS g`,
    );
    const w = worker({
      ...s.env,
      TALLY_LEDGER_RETENTION_MS: String(3 * 3_600_000),
      TALLY_LEDGER_PRUNE_INTERVAL_MS: '1000',
      TALLY_METRICS_PORT: '0',
    });
    await s.increment(10);
    const pruned = await w.waitForLog('the ledger pruned', (l) => l.msg === 'flush ledger pruned');
    expect(pruned.deleted).toBe(1000);
    await drained(s);
    const { rows } = await s.pool.query<{ old: number }>(
      `SELECT count(*) FILTER (WHERE batch_id LIKE 'old-%')::integer AS old FROM tally.applied_batches`,
    );
    expect(rows[0]?.old).toBe(0);
    const metrics = await fetch(`http://127.0.0.1:${await w.metricsPort()}/metrics`);
    expect(await metrics.text()).toMatch(/^tally_ledger_pruned_rows_total 1000$/m);
  });

  it('creates the bucket partitions at start, so flushed buckets never land in a default one', async () => {
    const s = await store();
    const w = worker({ ...s.env, TALLY_METRICS_PORT: '0' });
    const upkeep = await w.waitForLog(
      'the bucket upkeep',
      (l) => l.msg === 'bucket partitions maintained',
    );
    expect(upkeep).toMatchObject({ busy: false, dropped: 0, moving: false });
    expect(upkeep.created).toBeGreaterThan(0);
    await s.increment(10);
    await drained(s);
    const { rows } = await s.pool.query<{ ranged: number; defaulted: number }>(
      `SELECT count(*) FILTER (WHERE tableoid::regclass::text NOT LIKE '%default')::integer AS ranged,
              count(*) FILTER (WHERE tableoid::regclass::text LIKE '%default')::integer AS defaulted
       FROM tally.counter_buckets`,
    );
    expect(rows[0]).toMatchObject({ defaulted: 0 });
    expect(rows[0]?.ranged).toBeGreaterThan(0);
    const metrics = await fetch(`http://127.0.0.1:${await w.metricsPort()}/metrics`);
    expect(await metrics.text()).toMatch(
      new RegExp(`^tally_bucket_partitions_created_total ${String(upkeep.created)}$`, 'm'),
    );
  });

  it('re-creates its schedules when Redis loses its data, and flushing resumes', async () => {
    const s = await store({ persistence: 'none' });
    const w = worker(s.env);
    await s.increment(10);
    await drained(s);

    await s.redis.wipe();
    await w.waitForLog(
      'the schedulers re-created',
      (l) => l.msg === 'flush jobs missing; re-creating their schedulers',
    );
    // What was flushed survives; new increments rebuild their shard and get flushed again.
    await waitFor('Redis to answer', () => s.tally.get('c0'));
    await s.increment(10);
    await drained(s);
  });

  it('a replica paused past its locks while another takes over: counts stay exact', async () => {
    const s = await store();
    const locks = { TALLY_JOB_LOCK_MS: '1000', TALLY_FLUSH_LOCK_TTL_MS: '1000' };
    const paused = worker({ ...s.env, ...locks, TALLY_FAULT_DELAY: 'mid-transaction:800' });
    await paused.waitForLog('start-up', (l) => l.msg === 'flush worker started');
    await s.increment(30);
    await waitFor(
      'a batch in flight',
      async () =>
        (await s.tally.status()).shards.some((shard) => shard.inflightBatch !== null) || undefined,
    );
    paused.kill('SIGSTOP');
    const other = worker({ ...s.env, ...locks });
    await other.waitForLog('start-up', (l) => l.msg === 'flush worker started');
    await s.increment(30);
    // Past both locks: the other replica has taken the stalled jobs and flushed every shard.
    await waitFor(
      'the other replica to flush every shard',
      () =>
        new Set(other.logs.filter((l) => l.event === 'flush-start').map((l) => l.shard)).size ===
          4 || undefined,
      { timeoutMs: 20_000 },
    );
    paused.kill('SIGCONT');
    await drained(s);
    expect(other.logs.some((line) => line.event === 'flush-start')).toBe(true);
  });
});
