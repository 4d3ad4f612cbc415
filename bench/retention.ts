// Retention pruning while flushing: 10M minute-bucket rows past the retention are pruned by
// the bucket upkeep (partition drops) while a `tally worker` flushes a sustained load of
// increments; the flush lag with pruning is compared with the lag just before, in one run.
import pg from 'pg';
import { createTally, type Tally } from '../src/index.js';
import { startWorker } from '../test/support/tally-process.js';
import { freshDatabase, type BenchContext } from './support/context.js';
import { elapsedMs, percentile, zipf } from './support/measure.js';
import { offerOpenLoop, sampleFlushLag } from './support/open-loop.js';
import { human, type BenchmarkResult } from './support/results.js';

const rate = 50_000;
const flushIntervalMs = 1_000;
const dayMs = 86_400_000;
/** Counters the old rows belong to: 10M rows are 10,000 minutes (6.9 days) of each. */
const oldCounters = 1_000;

export async function retentionPruning(ctx: BenchContext): Promise<BenchmarkResult> {
  const rows = ctx.quick ? 1_000_000 : 10_000_000;
  // Long enough for the whole pruning (the worker made 35 days of minute ranges, each drop is
  // paced) to fall inside the second phase.
  const phaseMs = 20_000;
  const warmUpMs = 3_000;
  const database = await freshDatabase(ctx);
  const store = {
    redis: ctx.redis.url,
    postgres: database,
    keyPrefix: 'retention',
    buckets: ['minute', 'hour', 'day'] as const,
  };
  // Every process keeps minute buckets forever, but for the pruner: it alone prunes, when the
  // measurement says.
  const worker = startWorker({
    REDIS_URL: ctx.redis.url,
    DATABASE_URL: database,
    TALLY_KEY_PREFIX: store.keyPrefix,
    TALLY_BUCKETS: store.buckets.join(','),
    TALLY_RETENTION: 'minute=forever',
    TALLY_FLUSH_INTERVAL_MS: String(flushIntervalMs),
    TALLY_LOG_LEVEL: 'info',
    TALLY_ACCEPT_REDIS_LOSS: ctx.redis.persistence === 'aof-always' ? 'none' : 'bounded',
  });
  await worker.waitForLog('upkeep', (line) => line.msg === 'bucket partitions maintained');
  const pool = new pg.Pool({ connectionString: database });
  const tally = await createTally({ ...store, retention: { minute: null } });
  const pruner: Tally = await createTally({ ...store, retention: { minute: '7d' } });
  try {
    // The old rows: from 15 days ago, minute by minute, all before the 7 days kept.
    const fromMs = Math.floor(Date.now() / dayMs) * dayMs - 15 * dayMs;
    const loadMs = await elapsedMs(() =>
      pool.query(
        `INSERT INTO tally.counter_buckets
         SELECT 'old{tenant="t' || lpad((i % $2::integer)::text, 6, '0') || '"}', 'minute',
                to_timestamp(($1::bigint + (i / $2::integer) * 60000) / 1000.0), 1
         FROM generate_series(0, $3::integer - 1) AS i`,
        [fromMs, oldCounters, rows],
      ),
    );
    await pool.query('VACUUM ANALYZE tally.counter_buckets');
    // Heap and primary key of the minute partitions, per row: the cost of a bucket row.
    const size = await pool.query<{ bytes: string }>(
      `SELECT sum(pg_total_relation_size(inhrelid))::text AS bytes FROM pg_inherits
       WHERE inhparent = 'tally.counter_buckets_minute'::regclass`,
    );
    const bytesPerRow = Number(size.rows[0]?.bytes) / rows;
    await pool.query('CHECKPOINT');

    const pick = zipf(100_000);
    const started = performance.now();
    const pruneAt = started + warmUpMs + phaseMs;
    const deadline = pruneAt + phaseMs;
    const pruning = (async () => {
      while (performance.now() < pruneAt) await new Promise((r) => setTimeout(r, 50));
      const [lsn] = (await pool.query<{ lsn: string }>('SELECT pg_current_wal_lsn() AS lsn')).rows;
      const began = performance.now();
      const report = await pruner.maintainBuckets();
      const ms = performance.now() - began;
      const wal = await pool.query<{ bytes: string }>(
        'SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1) AS bytes',
        [lsn?.lsn],
      );
      return { report, ms, walBytes: Number(wal.rows[0]?.bytes) };
    })();
    const [lags, load, pruned] = await Promise.all([
      sampleFlushLag(tally, deadline),
      offerOpenLoop(rate, deadline, () => tally.incr(`c${pick()}`)),
      pruning,
    ]);
    if (load.failed > 0) throw new Error(`${load.failed} increments failed under the load`);
    const { rows: left } = await pool.query<{ n: string }>(
      `SELECT count(*) AS n FROM tally.counter_buckets WHERE name LIKE 'old%'`,
    );
    if (Number(left[0]?.n) !== 0) throw new Error(`${left[0]?.n} old rows were not pruned`);

    const lagIn = (from: number, to: number) =>
      lags.filter((s) => s.atMs >= from && s.atMs < to).map((s) => s.lagMs);
    const before = lagIn(started + warmUpMs, pruneAt);
    const during = lagIn(pruneAt, deadline);
    const figures = {
      'rows pruned': rows,
      'rows load s': loadMs / 1_000,
      'bytes per bucket row': bytesPerRow,
      'prune ms': pruned.ms,
      'prune WAL bytes': pruned.walBytes,
      'partitions dropped': pruned.report.dropped,
      'offered per second': load.offered / ((deadline - started) / 1_000),
      'lag before p50 ms': percentile(before, 50),
      'lag before p99 ms': percentile(before, 99),
      'lag pruning p50 ms': percentile(during, 50),
      'lag pruning p99 ms': percentile(during, 99),
    };
    const ratio = figures['lag pruning p99 ms'] / figures['lag before p99 ms'];
    return {
      name: 'retention pruning',
      figures,
      checks: [
        {
          benchmark: `retention pruning of ${human(rows)} minute rows while flushing ${human(rate)}/s`,
          measured:
            `${pruned.report.dropped} partitions in ${pruned.ms.toFixed(0)} ms, ` +
            `${(pruned.walBytes / 1024).toFixed(0)} KiB WAL (flushes' included); flush lag p99 ` +
            `${figures['lag pruning p99 ms'].toFixed(0)} ms pruning vs ` +
            `${figures['lag before p99 ms'].toFixed(0)} ms before (${ratio.toFixed(2)}×)`,
          target: 'flush lag p99 unchanged within noise (≤ 1.25× before)',
          met: ratio <= 1.25,
        },
      ],
    };
  } finally {
    await Promise.all([tally.close(), pruner.close(), pool.end()]);
    worker.kill('SIGTERM');
    await worker.exited;
  }
}
