/**
 * The flush ledger grows by a row per shard per flush; what reads it on every status call must
 * not grow with it.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import type { TallyError } from '../src/index.js';
import { shardOf } from '../src/counters/sharding.js';
import { shardKeys } from '../src/redis/shard-keys.js';
import { FlushMetrics } from '../src/worker/flush-metrics.js';
import { createDatabase, startRedis, type RedisHandle } from './support/index.js';
import { runTypeScript } from './support/child-process.js';
import { pauseQueriesAfterSnapshot } from './support/query-pause.js';
import { postgresTotals, tallyOn } from './support/tally-store.js';

const cli = new URL('../src/cli/main.ts', import.meta.url);

let redis: RedisHandle;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});

interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Actual Rows': number;
  'Actual Loops': number;
  Plans?: PlanNode[];
}

/** Every node of a plan that reads the ledger table, with the rows it read over all loops. */
function ledgerReads(node: PlanNode): { type: string; rows: number }[] {
  const own =
    node['Relation Name'] === 'applied_batches'
      ? [{ type: node['Node Type'], rows: node['Actual Rows'] * node['Actual Loops'] }]
      : [];
  return [...own, ...(node.Plans ?? []).flatMap(ledgerReads)];
}

async function plan(pool: pg.Pool, sql: string, values: unknown[]): Promise<PlanNode> {
  const { rows } = await pool.query<{ 'QUERY PLAN': [{ Plan: PlanNode }] }>(
    `EXPLAIN (ANALYZE, FORMAT JSON) ${sql}`,
    values,
  );
  const [explained] = rows[0]?.['QUERY PLAN'] ?? [];
  if (explained === undefined) throw new Error('no plan');
  return explained.Plan;
}

describe('the flush ledger', () => {
  it('a ledger of 1M rows costs status() one index step per shard', async () => {
    const url = await createDatabase();
    const shards = 16;
    const pool = new pg.Pool({ connectionString: url });
    // The statements status() sends, as sent: the plan checked below is of what it runs.
    const sent: { text: string; values: unknown[] }[] = [];
    const query = pool.query.bind(pool) as (...args: unknown[]) => Promise<unknown>;
    (pool as unknown as { query: (...args: unknown[]) => Promise<unknown> }).query = (
      ...args: unknown[]
    ) => {
      const [first, second] = args;
      const text = typeof first === 'string' ? first : (first as { text?: string }).text;
      if (text !== undefined) sent.push({ text, values: Array.isArray(second) ? second : [] });
      return query(...args);
    };
    const tally = await tallyOn(redis.url, pool, { shards });
    try {
      await pool.query(
        `INSERT INTO tally.applied_batches (shard, batch_id, counters, applied_at)
         SELECT g % $1, 'b' || g, 1, timestamptz '2026-01-01' + g * interval '1 second'
         FROM generate_series(1, 1000000) AS g`,
        [shards],
      );
      await pool.query('ANALYZE tally.applied_batches');

      sent.length = 0;
      await tally.status();
      const statusReads = sent.filter((statement) => statement.text.includes('applied_batches'));
      expect(statusReads).toHaveLength(1);
      const [lastFlush] = statusReads;
      const reads = ledgerReads(await plan(pool, lastFlush?.text ?? '', lastFlush?.values ?? []));
      expect(reads.length).toBeGreaterThan(0);
      expect(reads.every((read) => read.type.startsWith('Index'))).toBe(true);
      // One row per shard, not the million `max(…) GROUP BY shard` read.
      expect(reads.reduce((sum, read) => sum + read.rows, 0)).toBeLessThanOrEqual(shards);
      const grouped = ledgerReads(
        await plan(
          pool,
          'SELECT shard, max(applied_at) FROM tally.applied_batches GROUP BY shard',
          [],
        ),
      );
      // (Parallel workers' averages round: "about" a million.)
      expect(grouped.reduce((sum, read) => sum + read.rows, 0)).toBeGreaterThan(990_000);

      // And it reads the right rows: the latest of each shard.
      const status = await tally.status();
      const latest = (shard: number) =>
        new Date(
          Date.parse('2026-01-01T00:00:00Z') + (1_000_000 - ((1_000_000 - shard) % shards)) * 1000,
        );
      for (const shard of status.shards) {
        expect(shard.lastFlushAt?.getTime(), `shard ${shard.shard}`).toBe(
          latest(shard.shard).getTime(),
        );
      }
    } finally {
      await tally.close();
      await pool.end();
    }
  });
});

const hourMs = 3_600_000;
const dayMs = 24 * hourMs;

/** A store of one shard with the shortest retention (3 h), its pool, keys and a Redis client. */
async function prunedStore(shards = 1) {
  const databaseUrl = await createDatabase();
  const pool = new pg.Pool({ connectionString: databaseUrl });
  const keyPrefix = `t${randomBytes(4).toString('hex')}`;
  const tally = await tallyOn(redis.url, pool, {
    shards,
    keyPrefix,
    ledgerRetentionMs: 3 * hourMs,
  });
  const client = new Redis(redis.url);
  onTestFinished(async () => {
    await tally.close();
    await pool.end();
    client.disconnect();
  });
  // What the CLI needs to reach the same store.
  const env = {
    REDIS_URL: redis.url,
    DATABASE_URL: databaseUrl,
    TALLY_SHARDS: String(shards),
    TALLY_KEY_PREFIX: keyPrefix,
  };
  return { tally, pool, redis: client, keys: shardKeys(keyPrefix, 0), env };
}

type Store = Awaited<ReturnType<typeof prunedStore>>;

/** Ledger rows of shard 0 applied `ageMs` ago, as months of flushing leave them. */
async function oldLedgerRows(pool: pg.Pool, count: number, ageMs: number): Promise<void> {
  await pool.query(
    `INSERT INTO tally.applied_batches (shard, batch_id, counters, applied_at)
     SELECT 0, 'old-' || g, 1, now() - make_interval(secs => $2 / 1000.0) - g * interval '1 ms'
     FROM generate_series(1, $1) AS g`,
    [count, ageMs],
  );
}

async function ledgerRows(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(
    'SELECT count(*)::integer AS n FROM tally.applied_batches',
  );
  return rows[0]?.n ?? -1;
}

/**
 * Counts `by` on `counter` and flushes it; returns the Redis state the batch had in flight, as a
 * backup taken mid-flush holds it, and sets the batch's ledger row `ageMs` into the past.
 */
async function flushedLongAgo(
  { tally, pool, redis, keys }: Store,
  counter: string,
  by: number,
  ageMs: number,
) {
  await tally.incr(counter, by);
  const deltas = await redis.dumpBuffer(keys.pending);
  const tags = await redis.dumpBuffer(keys.pendingTags);
  const [batch] = await tally.flush();
  if (batch === undefined) throw new Error('nothing flushed');
  await pool.query(
    `UPDATE tally.applied_batches SET applied_at = now() - make_interval(secs => $2 / 1000.0)
     WHERE batch_id = $1`,
    [batch.batchId, ageMs],
  );
  const restore = async () => {
    await redis.restore(keys.inflight, 0, deltas, 'REPLACE');
    await redis.restore(keys.inflightTags, 0, tags, 'REPLACE');
    const at = Date.now() - ageMs;
    await redis.hset(keys.inflightMeta, { batch: batch.batchId, since: at, snapshot: at });
  };
  return { batchId: batch.batchId, restore };
}

/** Puts a batch in flight that was snapshotted `ageMs` ago and never applied (PostgreSQL down since). */
async function stuckInFlight(
  { tally, redis, keys }: Store,
  counter: string,
  by: number,
  ageMs: number,
) {
  await tally.incr(counter, by);
  await redis.rename(keys.pending, keys.inflight);
  await redis.rename(keys.pendingTags, keys.inflightTags);
  await redis.rename(keys.pendingNewCounters, keys.inflightNewCounters);
  await redis.del(keys.pendingSince);
  const at = Date.now() - ageMs;
  const batchId = randomUUID();
  await redis.hset(keys.inflightMeta, { batch: batchId, since: at, snapshot: at });
  return batchId;
}

/** `name`, or the first `name-N` that lives on shard 0 of a store of `shards`. */
function onShard0(name: string, shards: number): string {
  for (let i = 0; ; i++) {
    const candidate = i === 0 ? name : `${name}-${i}`;
    if (shardOf(candidate, shards) === 0) return candidate;
  }
}

describe('pruning the flush ledger', () => {
  it('deletes rows past the retention in bounded statements, and keeps the recent ones', async () => {
    const store = await prunedStore();
    const { tally, pool } = store;
    await oldLedgerRows(pool, 105_000, 2 * dayMs);
    await tally.incr('recent', 1);
    await tally.flush();

    // 20 statements of 5,000 rows a shard a run: a backlog drains over runs, not in one.
    expect(await tally.pruneLedger()).toEqual({ deleted: 100_000, busy: false });
    expect(await tally.pruneLedger()).toEqual({ deleted: 5_000, busy: false });
    expect(await tally.pruneLedger()).toEqual({ deleted: 0, busy: false });
    expect(await ledgerRows(pool)).toBe(1);
    const { rows } = await pool.query<{ pruned_before: Date }>(
      'SELECT pruned_before FROM tally.ledger_horizons WHERE shard = 0',
    );
    const horizon = rows[0]?.pruned_before.getTime() ?? 0;
    expect(Math.abs(horizon - (Date.now() - 3 * hourMs))).toBeLessThan(60_000);
  });

  it('one process prunes at a time: another finds it busy and deletes nothing', async () => {
    const store = await prunedStore();
    await oldLedgerRows(store.pool, 10, 2 * dayMs);
    const holder = await store.pool.connect();
    onTestFinished(() => {
      holder.release();
    });
    await holder.query('BEGIN');
    await holder.query('SELECT pg_advisory_xact_lock(500152355962)');
    expect(await store.tally.pruneLedger()).toEqual({ deleted: 0, busy: true });
    await holder.query('ROLLBACK');
    // Each shard keeps its newest row, however old: its last flush stays readable.
    expect(await store.tally.pruneLedger()).toEqual({ deleted: 9, busy: false });
    expect(await ledgerRows(store.pool)).toBe(1);
    const [shard] = (await store.tally.status()).shards;
    const { rows } = await store.pool.query<{ at: Date }>(
      'SELECT max(applied_at) AS at FROM tally.applied_batches',
    );
    expect(shard?.lastFlushAt?.getTime()).toBe(rows[0]?.at.getTime());
  });

  it("keeps the in-flight batch's row: applied long ago, not acknowledged, it is not applied again", async () => {
    const store = await prunedStore();
    const old = await flushedLongAgo(store, 'kept', 5, 2 * dayMs);
    await old.restore(); // the acknowledgement never happened
    await oldLedgerRows(store.pool, 100, 3 * dayMs);

    expect((await store.tally.pruneLedger()).deleted).toBe(100);
    const [batch] = await store.tally.flush();
    expect(batch).toMatchObject({ batchId: old.batchId, resumed: true, alreadyApplied: true });
    expect((await postgresTotals(store.pool)).get('kept')).toBe(5);
  });

  it('applies a batch stuck in flight since before the horizon: pruning never passes it', async () => {
    const store = await prunedStore();
    const stuck = await stuckInFlight(store, 'stuck', 7, 2 * dayMs);
    await oldLedgerRows(store.pool, 100, 3 * dayMs);

    expect((await store.tally.pruneLedger()).deleted).toBe(99); // the newest row stays
    const [batch] = await store.tally.flush();
    expect(batch).toMatchObject({ batchId: stuck, resumed: true, alreadyApplied: false });
    expect((await postgresTotals(store.pool)).get('stuck')).toBe(7);
  });

  describe('a batch older than the pruned ledger that reappears (Redis restored from an old backup)', () => {
    /** A store whose shard 0 has `billed` (5, applied) back in flight, refused. */
    async function refusedBatch(shards = 1) {
      const store = await prunedStore(shards);
      const old = await flushedLongAgo(store, onShard0('billed', shards), 5, 2 * dayMs);
      // A later flush: the old batch's row is no longer the shard's newest, which stays.
      await store.tally.incr(onShard0('later', shards), 1);
      await store.tally.flush();
      expect((await store.tally.pruneLedger()).deleted).toBe(1);
      await old.restore();
      const failure = await store.tally.flush().then(
        () => undefined,
        (error: unknown) => error as TallyError,
      );
      return { ...store, batchId: old.batchId, failure };
    }

    it('is refused, kept in flight and reported, not applied twice', async () => {
      const { tally, pool, batchId, failure } = await refusedBatch();
      expect(failure?.code).toBe('BATCH_REFUSED');
      expect(failure?.message).toMatch(/tally resolve-batch 0 /);
      expect((await postgresTotals(pool)).get('billed')).toBe(5);
      // Every later flush refuses it again; it stays.
      await expect(tally.flush()).rejects.toMatchObject({ code: 'BATCH_REFUSED' });
      expect((await postgresTotals(pool)).get('billed')).toBe(5);

      const [shard] = (await tally.status()).shards;
      expect(shard?.inflightBatch).toMatchObject({ batchId, refused: true });
      // Whether it was applied is the operator's call: reconcile neither guesses nor repairs.
      const redisTotal = await tally.get('billed');
      const [report] = await tally.reconcile({ repair: true });
      expect(report).toMatchObject({ refusedBatch: batchId, repaired: false, drift: [] });
      expect(await tally.get('billed')).toBe(redisTotal);
      // Reads count it as applied, the usual case (a batch back from a restored backup).
      const total = (
        await tally.usage('billed', {
          from: Date.now() - 4 * dayMs,
          to: Date.now() + 1,
          granularity: 'day',
        })
      ).reduce((sum, bucket) => sum + bucket.value, 0);
      expect(total).toBe(5);
      const metrics = await new FlushMetrics(tally).render();
      expect(metrics.body).toMatch(/^tally_refused_batches\{shard="0"\} 1$/m);
    });

    it("discarded on the operator's word: Redis is rebuilt from PostgreSQL, nothing counts twice", async () => {
      const { tally, pool, batchId, keys, redis: client } = await refusedBatch();
      await expect(tally.resolveRefusedBatch(0, 'another-batch', 'discard')).rejects.toMatchObject({
        code: 'VALIDATION',
      });
      expect(await tally.resolveRefusedBatch(0, batchId, 'discard')).toMatchObject({
        decision: 'discard',
        deltas: 1, // one per counter and smallest bucket
      });
      expect(await client.exists(keys.inflightMeta, keys.inflight)).toBe(0);
      expect(await tally.get('billed')).toBe(5);
      expect(await tally.flush()).toEqual([]);
      expect((await postgresTotals(pool)).get('billed')).toBe(5);
    });

    it('discarded with a counter new to the store: its later deltas still count in usage queries', async () => {
      const store = await prunedStore();
      const { tally, pool, redis: client, keys } = store;
      await oldLedgerRows(pool, 100, 3 * dayMs);
      await tally.pruneLedger();
      // A batch from before the horizon whose only counter PostgreSQL never saw.
      const batchId = await stuckInFlight(store, 'fresh', 4, 2 * dayMs);
      await tally.incr('fresh', 3); // its total exists: no longer a new counter
      await expect(tally.flush()).rejects.toMatchObject({ code: 'BATCH_REFUSED' });
      await tally.resolveRefusedBatch(0, batchId, 'discard');

      const today = Math.floor(Date.now() / dayMs) * dayMs;
      const usage = async () => {
        const { rows } = await tally.query({
          prefix: 'fresh',
          from: today - dayMs,
          to: today + dayMs,
          granularity: 'total',
        });
        return rows.map((row) => [row.counter, row.value]);
      };
      expect(await usage()).toEqual([['fresh', 3]]);
      await tally.flush();
      expect(await usage()).toEqual([['fresh', 3]]);
      // Applied: PostgreSQL names it now, Redis no longer has to.
      expect(await client.smembers(keys.orphanCounters)).toEqual([]);
    });

    it('shown by tally status and reconcile (exit 1), settled by tally resolve-batch', async () => {
      const { batchId, env, pool } = await refusedBatch();
      const status = await runTypeScript(cli, ['status'], env);
      expect(status.stdout).toMatch(/1 delta REFUSED/);
      expect(status.stdout).toContain(
        `shard 0's flushes refuse batch ${batchId} (older than the pruned ledger)`,
      );
      const check = await runTypeScript(cli, ['reconcile', '--json'], env);
      expect(check.code).toBe(1);
      expect((JSON.parse(check.stdout) as { refusedBatches: unknown }).refusedBatches).toEqual([
        { shard: 0, batchId },
      ]);
      const resolved = await runTypeScript(cli, ['resolve-batch', '0', batchId, '--discard'], env);
      expect(resolved.code).toBe(0);
      expect(resolved.stdout).toMatch(/batch .* discarded \(1 delta\); Redis totals rebuilt/);
      expect((await runTypeScript(cli, ['reconcile'], env)).code).toBe(0);
      expect((await postgresTotals(pool)).get('billed')).toBe(5);
    });

    it('does not stop flush() of the other shards, which names it once they are flushed', async () => {
      const { tally, pool } = await refusedBatch(4);
      const others = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'].filter(
        (name) => shardOf(name, 4) !== 0,
      );
      for (const name of others) await tally.incr(name, 2);
      const failure = (await tally.flush().catch((error: unknown) => error)) as TallyError;
      expect(failure.code).toBe('BATCH_REFUSED');
      expect(failure.details).toMatchObject({ refused: [{ shard: 0 }] });
      const totals = await postgresTotals(pool);
      for (const name of others) expect(totals.get(name), name).toBe(2);
    });

    it('settled once: a second, opposite decision finds nothing to settle', async () => {
      const { tally, pool, batchId } = await refusedBatch();
      const [first, second] = await Promise.allSettled([
        tally.resolveRefusedBatch(0, batchId, 'apply'),
        tally.resolveRefusedBatch(0, batchId, 'discard'),
      ]);
      expect([first.status, second.status].sort()).toEqual(['fulfilled', 'rejected']);
      const total = (await postgresTotals(pool)).get('billed');
      expect(total).toBe(first.status === 'fulfilled' ? 10 : 5);
    });

    it('a usage query the decision lands in the middle of reads it applied, not refused', async () => {
      const { tally, pool, batchId } = await refusedBatch();
      const day = 24 * hourMs;
      const today = Math.floor(Date.now() / day) * day;
      const paused = pauseQueriesAfterSnapshot(5_000);
      const query = tally.query({
        prefix: 'billed',
        from: new Date(today - 3 * day),
        to: new Date(today + day),
        granularity: 'total',
      });
      // The query holds its snapshot, which counts the refused batch as applied.
      await paused.held(pool);
      await tally.resolveRefusedBatch(0, batchId, 'apply');
      const { rows } = await query;
      expect(rows.map((row) => [row.counter, row.value])).toEqual([['billed', 10]]);
    });

    it("applied on the operator's word", async () => {
      const { tally, pool, batchId } = await refusedBatch();
      // A quota seeded meanwhile counts the refused batch as applied, as reads do...
      const quota = () =>
        tally.incr('billed', 0, { limit: { max: 1_000, per: 'month' }, check: true });
      expect((await quota()).usage).toBe(5);
      await tally.resolveRefusedBatch(0, batchId, 'apply');
      expect((await postgresTotals(pool)).get('billed')).toBe(10);
      // ...and seeds again once it is applied.
      expect((await quota()).usage).toBe(10);
      expect((await tally.status()).shards[0]?.inflightBatch).toBeNull();
    });
  });
});
