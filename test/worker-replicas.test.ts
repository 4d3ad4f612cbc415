import { randomBytes } from 'node:crypto';
import { Queue } from 'bullmq';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTally, migrate, type Tally } from '../src/index.js';
import { createDatabase, startRedis, waitFor, type RedisHandle } from './support/index.js';
import { startWorker, type LogLine, type TallyProcess } from './support/tally-process.js';
import { postgresTotals } from './support/tally-store.js';

const intervalMs = 250;
// Long enough that a replica starved of CPU by the rest of the suite still renews its lock in
// time (it renews every third of it).
const lockTtlMs = 3_000;

let redis: RedisHandle;
beforeAll(async () => {
  redis = await startRedis({ persistence: 'aof-always' });
});
afterAll(async () => {
  await redis.stop();
});

/** The spans during which a replica flushed a shard, from its flush-start/flush-end lines. */
function lockSpans(replicas: { logs: LogLine[] }[]): Map<number, [number, number][]> {
  const spans = new Map<number, [number, number][]>();
  for (const { logs } of replicas) {
    const open = new Map<number, number>();
    for (const line of logs) {
      const shard = line.shard as number;
      if (line.event === 'flush-start') open.set(shard, line.atMs as number);
      if (line.event === 'flush-end') {
        const start = open.get(shard);
        open.delete(shard);
        if (start !== undefined)
          spans.set(shard, [...(spans.get(shard) ?? []), [start, line.atMs as number]]);
      }
    }
    // A replica killed while holding a shard leaves a span without an end: its lock lasted
    // until its last renewal plus the TTL, which its log cannot tell. Such spans are left out.
  }
  return spans;
}

describe('3 worker replicas, one killed with SIGKILL every second for 20 s', () => {
  it('PostgreSQL == Σ acknowledged after the drain, lag recovers, and no shard is ever flushed twice at once', async () => {
    const databaseUrl = await createDatabase();
    await migrate(databaseUrl);
    const keyPrefix = `r${randomBytes(4).toString('hex')}`;
    const tally: Tally = await createTally({
      redis: redis.url,
      postgres: databaseUrl,
      shards: 8,
      keyPrefix,
    });
    const pool = new pg.Pool({ connectionString: databaseUrl });
    const env = {
      REDIS_URL: redis.url,
      DATABASE_URL: databaseUrl,
      TALLY_SHARDS: '8',
      TALLY_KEY_PREFIX: keyPrefix,
      TALLY_FLUSH_INTERVAL_MS: String(intervalMs),
      TALLY_FLUSH_LOCK_TTL_MS: String(lockTtlMs),
      TALLY_JOB_LOCK_MS: '2000',
    };
    const everyReplica: TallyProcess[] = [];
    const start = () => {
      const replica = startWorker(env);
      everyReplica.push(replica);
      return replica;
    };
    const live = [start(), start(), start()];
    const acknowledged = new Map<string, number>();
    const load = new AbortController();
    try {
      await Promise.all(
        live.map((r) => r.waitForLog('start-up', (l) => l.msg === 'flush worker started')),
      );
      const loadDone = (async () => {
        for (let i = 0; !load.signal.aborted; i++) {
          const counter = `k${i % 40}`;
          await tally.incr(counter, 1);
          acknowledged.set(counter, (acknowledged.get(counter) ?? 0) + 1);
          if (i % 50 === 0) await new Promise((resolve) => setImmediate(resolve));
        }
      })();

      for (let round = 0; round < 20; round++) {
        await new Promise((resolve) => setTimeout(resolve, 1_000));
        const victim = live.splice(round % live.length, 1)[0];
        victim?.kill('SIGKILL');
        await victim?.exited;
        live.push(start());
      }
      const lastKillAt = Date.now();
      load.abort();
      await loadDone;

      await waitFor(
        'the replicas to drain everything',
        async () => {
          const totals = await postgresTotals(pool);
          for (const [counter, value] of acknowledged) if (totals.get(counter) !== value) return;
          return true;
        },
        { timeoutMs: 30_000 },
      );
      expect(await postgresTotals(pool)).toEqual(acknowledged);

      // Flush lag back under two intervals once the kills stopped (and the last killed
      // replica's shard lock expired).
      await waitFor(
        'the flush lag to recover',
        async () => {
          await tally.incr('lag-probe', 1);
          const status = await tally.status();
          return (
            Math.max(...status.shards.map((s) => s.oldestUnflushedAgeMs)) < 2 * intervalMs ||
            undefined
          );
        },
        { timeoutMs: 10_000 },
      );
      expect(Date.now() - lastKillAt).toBeLessThan(10_000);

      for (const [shard, spans] of lockSpans(everyReplica)) {
        const sorted = spans.sort((a, b) => a[0] - b[0]);
        for (let i = 1; i < sorted.length; i++) {
          const previous = sorted[i - 1] as [number, number];
          const current = sorted[i] as [number, number];
          expect(current[0], `shard ${shard}: flushes overlap`).toBeGreaterThanOrEqual(previous[1]);
        }
      }
      expect(lockSpans(everyReplica).size).toBe(8);

      // 23 replica starts, each upserting every schedule: still exactly one per shard.
      const queue = new Queue('flush', {
        connection: { host: redis.host, port: redis.port },
        prefix: `{${keyPrefix}:bull}`,
      });
      try {
        expect(await queue.getJobSchedulersCount()).toBe(8);
      } finally {
        await queue.close();
      }
    } finally {
      load.abort();
      for (const replica of everyReplica) replica.kill('SIGKILL');
      await Promise.all(everyReplica.map((replica) => replica.exited));
      await tally.close();
      await pool.end();
    }
  }, 120_000);
});
