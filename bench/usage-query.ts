// Usage queries: a billing month per tenant over 100k tenants (30 day buckets each, 3M bucket
// rows) against the raw SQL GROUP BY of the same rows; a CSV export of 1M rows (speed, memory);
// one tenant's month while 100k increments/s flow and a worker flushes (latency).
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Redis } from 'ioredis';
import pg from 'pg';
import { shardOf } from '../src/counters/sharding.js';
import { canonicalName } from '../src/counters/counter-name.js';
import { usageCsv } from '../src/export/usage-output.js';
import { createTally, type Tally, type UsageQueryInput } from '../src/index.js';
import { runTypeScript } from '../test/support/child-process.js';
import { startWorker } from '../test/support/tally-process.js';
import { freshDatabase, type BenchContext } from './support/context.js';
import { elapsedMs, mediansInTurns, percentile, sleep } from './support/measure.js';
import { human, type BenchmarkResult, type Check } from './support/results.js';

const shards = 16;
const keyPrefix = 'usage';
const tenantName = (i: number) => `t${String(i).padStart(6, '0')}`;
const loadGenerator = new URL('./support/load-generator.ts', import.meta.url);

/** 100k tenants' counters with a day bucket of 1 for each day of November 2026. */
async function populate(database: string, tenants: number): Promise<void> {
  const names = Array.from({ length: tenants }, (_, i) =>
    canonicalName({ name: 'api_calls', labels: { tenant: tenantName(i) } }),
  );
  const pool = new pg.Pool({ connectionString: database, max: 1 });
  try {
    // The trigger of migration 0005 records each counter's labels, as a flush would.
    await pool.query(
      `INSERT INTO tally.counters (name, shard, value)
       SELECT name, shard, 30 FROM unnest($1::text[], $2::integer[]) AS c (name, shard)`,
      [names, names.map((name) => shardOf(name, shards))],
    );
    await pool.query(
      `INSERT INTO tally.counter_buckets (name, granularity, bucket_start, value)
       SELECT c.name, 'day', d, 1 FROM tally.counters c,
              generate_series('2026-11-01T00:00:00Z'::timestamptz, '2026-11-30T00:00:00Z', '1 day') AS d`,
    );
    await pool.query('VACUUM ANALYZE tally.counters, tally.counter_buckets, tally.counter_labels');
  } finally {
    await pool.end();
  }
}

/** BASELINE, not Tally: the plain GROUP BY a DBA would write, every row fetched. */
async function rawGroupByMs(pool: pg.Pool): Promise<number> {
  return elapsedMs(() =>
    pool.query(
      `SELECT l.labels ->> 'tenant' AS tenant, sum(b.value)::text AS value
       FROM tally.counter_buckets b JOIN tally.counter_labels l ON l.name = b.name
       WHERE l.base = 'api_calls' AND b.granularity = 'day'
         AND b.bucket_start >= '2026-11-01T00:00:00Z' AND b.bucket_start < '2026-12-01T00:00:00Z'
       GROUP BY 1`,
    ),
  );
}

const november: UsageQueryInput = {
  counter: 'api_calls',
  groupBy: ['tenant'],
  from: '2026-11-01',
  to: '2026-12-01',
  granularity: 'month',
};

async function tallyQueryMs(tally: Tally, expectedRows: number): Promise<number> {
  let rows = 0;
  const ms = await elapsedMs(async () => {
    for await (const row of tally.queryStream(november)) rows += row.value === 30 ? 1 : 0;
  });
  if (rows !== expectedRows)
    throw new Error(`the query answered ${rows} rows of 30, not ${expectedRows}`);
  return ms;
}

/** A full garbage collection, without starting Node with --expose-gc. */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

/** A CSV export of 100k tenants × 10 days: rows per second, and the most memory it added. */
async function csvExport(tally: Tally): Promise<{ rows: number; ms: number; growthBytes: number }> {
  const query: UsageQueryInput = { ...november, to: '2026-11-11', granularity: 'day' };
  // Collected first, so the baseline is what the process needs, not the garbage of the queries
  // before (one run measured +0 MB against an inflated baseline).
  collectGarbage();
  // The JavaScript heap and the buffers outside it, not RSS: a process keeps the pages it freed,
  // so its RSS after the queries before already held room for the export (+0 MB, twice).
  const used = () => {
    const { heapUsed, external, arrayBuffers } = process.memoryUsage();
    return heapUsed + external + arrayBuffers;
  };
  const before = used();
  let peak = before;
  const sampler = setInterval(() => (peak = Math.max(peak, used())), 20);
  let lines = -1; // the header
  const ms = await elapsedMs(async () => {
    for await (const chunk of usageCsv(query, tally.queryStream(query))) {
      for (let at = chunk.indexOf('\n'); at !== -1; at = chunk.indexOf('\n', at + 1)) lines++;
    }
  });
  clearInterval(sampler);
  peak = Math.max(peak, used());
  return { rows: lines, ms, growthBytes: peak - before };
}

/** One tenant's month, queried back to back while 100k increments/s flow and a worker flushes. */
async function latencyUnderLoad(
  ctx: BenchContext,
  database: string,
  tally: Tally,
  tenants: number,
): Promise<{
  p50: number;
  p99: number;
  idleP50: number;
  idleP99: number;
  queries: number;
  offered: number;
  acknowledged: number;
  pingP99: number;
}> {
  const rate = 100_000;
  const seconds = ctx.quick ? 5 : 15;
  // The month increments land in now, for a tenant with traffic (the zipf's 10th).
  const now = new Date();
  const month = {
    counter: 'api_calls',
    where: { tenant: tenantName(9) },
    from: new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)),
    to: new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1)),
    granularity: 'day' as const,
  };
  // The same query with nothing else running: what the load adds.
  const idle: number[] = [];
  for (let i = 0; i < 200; i++) idle.push(await elapsedMs(() => tally.query(month)));
  const worker = startWorker({
    REDIS_URL: ctx.redis.url,
    DATABASE_URL: database,
    TALLY_KEY_PREFIX: keyPrefix,
    TALLY_BUCKETS: 'day',
    TALLY_FLUSH_INTERVAL_MS: '1000',
    TALLY_LOG_LEVEL: 'info',
    TALLY_ACCEPT_REDIS_LOSS: ctx.redis.persistence === 'aof-always' ? 'none' : 'bounded',
  });
  await worker.waitForLog('start-up', (line) => line.msg === 'flush worker started');
  const load = runTypeScript(loadGenerator, [
    JSON.stringify({
      redis: ctx.redis.url,
      postgres: database,
      keyPrefix,
      shards,
      buckets: ['day'],
      rate,
      seconds: seconds + 3,
      tenants,
    }),
  ]);
  await sleep(3_000); // warm up: the load running, pending deltas, flushes under way
  // The benchmarks before left garbage in this process; its collection is not the query's.
  collectGarbage();
  const latencies: number[] = [];
  // What one Redis round trip costs under the same load: the floor of anything that reads.
  const pinger = new Redis(ctx.redis.url);
  const pings: number[] = [];
  const deadline = performance.now() + seconds * 1_000;
  while (performance.now() < deadline) {
    latencies.push(await elapsedMs(() => tally.query(month)));
    pings.push(await elapsedMs(() => pinger.ping()));
  }
  pinger.disconnect();
  const { offered, acknowledged } = JSON.parse((await load).stdout) as {
    offered: number;
    acknowledged: number;
  };
  worker.kill('SIGTERM');
  await worker.exited;
  return {
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    idleP50: percentile(idle, 50),
    idleP99: percentile(idle, 99),
    queries: latencies.length,
    offered,
    acknowledged,
    pingP99: percentile(pings, 99),
  };
}

export async function usageQuery(ctx: BenchContext): Promise<BenchmarkResult> {
  const tenants = 100_000;
  const database = await freshDatabase(ctx);
  await populate(database, tenants);
  const tally = await createTally({
    redis: ctx.redis.url,
    postgres: database,
    shards,
    keyPrefix,
    buckets: ['day'],
  });
  const pool = new pg.Pool({ connectionString: database, max: 1 });
  const figures: Record<string, number> = {};
  const checks: Check[] = [];
  try {
    const [raw = Number.NaN, query = Number.NaN] = await mediansInTurns(3, [
      () => rawGroupByMs(pool),
      () => tallyQueryMs(tally, tenants),
    ]);
    figures['raw GROUP BY, 100k tenants × 30 days, ms'] = raw;
    figures['tally query, 100k tenants × 30 days, ms'] = query;
    checks.push({
      benchmark: 'November per tenant, 100k tenants (3M day buckets)',
      measured: `${(query / raw).toFixed(2)}× the raw GROUP BY (${human(query)} ms vs ${human(raw)} ms)`,
      target: '≤ 1.25× the raw GROUP BY, < 2 s',
      met: query / raw <= 1.25 && query < 2_000,
    });
    const csv = await csvExport(tally);
    figures['csv export rows'] = csv.rows;
    figures['csv export ms'] = csv.ms;
    figures['csv export memory growth bytes'] = csv.growthBytes;
    const rowsPerSecond = (csv.rows / csv.ms) * 1_000;
    checks.push({
      benchmark: `CSV export of ${human(csv.rows)} rows`,
      measured: `${human(rowsPerSecond)} rows/s, memory +${(csv.growthBytes / 2 ** 20).toFixed(0)} MB`,
      target: '≥ 200k rows/s, ≤ 100 MB more',
      met: rowsPerSecond >= 200_000 && csv.growthBytes <= 100 * 2 ** 20,
    });
    const latency = await latencyUnderLoad(ctx, database, tally, tenants);
    figures['one tenant month p50 ms'] = latency.p50;
    figures['one tenant month p99 ms'] = latency.p99;
    figures['one tenant month queries'] = latency.queries;
    figures['one tenant month, no load, p50 ms'] = latency.idleP50;
    figures['one tenant month, no load, p99 ms'] = latency.idleP99;
    figures['increments offered'] = latency.offered;
    figures['increments acknowledged'] = latency.acknowledged;
    figures['redis PING under the load, p99 ms'] = latency.pingP99;
    checks.push({
      benchmark: "one tenant's month while 100k increments/s flow",
      measured:
        `p99 ${latency.p99.toFixed(1)} ms, p50 ${latency.p50.toFixed(1)} ms (${latency.queries} queries, ` +
        `${human(latency.acknowledged)} increments; no load: p99 ${latency.idleP99.toFixed(1)}, p50 ${latency.idleP50.toFixed(1)}; ` +
        `one Redis PING under the load: p99 ${latency.pingP99.toFixed(1)})`,
      target: 'p99 ≤ 20 ms',
      met: latency.p99 <= 20,
    });
  } finally {
    await pool.end();
    await tally.close();
  }
  return { name: 'usage-query', figures, checks };
}
