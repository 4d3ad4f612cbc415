// Hot-path throughput, as ratios against baselines measured in the same run:
//   npx tsx bench/hot-path.ts [--seconds 5] [--in-flight 10000]
// Baselines: raw ioredis HINCRBY (auto-pipelined, same concurrency and keys) and the naive
// PostgreSQL counter (UPDATE … RETURNING, falling back to INSERT, one statement per increment).
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import pg from 'pg';
import { createTally, migrate } from '../src/index.js';
import { startPostgres, startRedis } from '../test/support/index.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    'in-flight': { type: 'string', default: '10000' },
    counters: { type: 'string', default: '100000' },
  },
});
const seconds = Number(values.seconds);
const inFlight = Number(values['in-flight']);
const counterCount = Number(values.counters);

/** Zipf(1.0) over `n` keys: a few hot counters, a long tail (as API metering sees). */
function zipf(n: number): () => number {
  const weights = Array.from({ length: n }, (_, i) => 1 / (i + 1));
  const total = weights.reduce((a, b) => a + b, 0);
  const cumulative: number[] = [];
  let sum = 0;
  for (const w of weights) cumulative.push((sum += w / total));
  return () => {
    const r = Math.random();
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((cumulative[mid] ?? 1) < r) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
}

/** Runs `op` with `concurrency` loops for `seconds`; returns operations per second. */
async function throughput(concurrency: number, op: () => Promise<unknown>): Promise<number> {
  const deadline = Date.now() + seconds * 1_000;
  let done = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < deadline) {
        await op();
        done++;
      }
    }),
  );
  return done / seconds;
}

const redis = await startRedis({ persistence: 'none' });
const postgres = await startPostgres();
const url = await postgres.createDatabase();
await migrate(url);
const pick = zipf(counterCount);
const results: Record<string, number> = {};
try {
  const raw = new Redis(redis.url, { enableAutoPipelining: true });
  results.rawHincrbyZipf = await throughput(inFlight, () => raw.hincrby('raw', `c${pick()}`, 1));
  results.rawHincrbyHot = await throughput(inFlight, () => raw.hincrby('raw', 'hot', 1));
  raw.disconnect();

  const tally = await createTally({ redis: redis.url, postgres: url });
  results.tallyGroupCommitZipf = await throughput(inFlight, () => tally.incr(`c${pick()}`));
  results.tallyGroupCommitHot = await throughput(inFlight, () => tally.incr('hot'));
  await tally.close();
  const perCall = await createTally({
    redis: redis.url,
    postgres: url,
    coalesce: false,
    keyPrefix: 'percall',
  });
  results.tallyPerCallZipf = await throughput(inFlight, () => perCall.incr(`c${pick()}`));
  await perCall.close();

  // The naive PostgreSQL counter (baseline): one statement per increment.
  const pool = new pg.Pool({ connectionString: url, max: 20 });
  await pool.query('CREATE TABLE naive (name text PRIMARY KEY, value bigint NOT NULL)');
  const naive = async (name: string) => {
    const updated = await pool.query(
      'UPDATE naive SET value = value + 1 WHERE name = $1 RETURNING value',
      [name],
    );
    if (updated.rowCount === 0) {
      await pool.query(
        'INSERT INTO naive VALUES ($1, 1) ON CONFLICT (name) DO UPDATE SET value = naive.value + 1',
        [name],
      );
    }
  };
  results.naivePostgresZipf = await throughput(64, () => naive(`c${pick()}`));
  results.naivePostgresHot = await throughput(64, () => naive('hot'));
  await pool.end();
} finally {
  await postgres.destroy();
  await redis.stop();
}

const ratio = (a: number | undefined, b: number | undefined) => ((a ?? 0) / (b ?? 1)).toFixed(2);
console.log(JSON.stringify({ seconds, inFlight, counterCount, results }, null, 1));
console.log(
  `group commit vs raw HINCRBY (Zipf): ${ratio(results.tallyGroupCommitZipf, results.rawHincrbyZipf)}×`,
);
console.log(
  `group commit vs naive PostgreSQL (Zipf): ${ratio(results.tallyGroupCommitZipf, results.naivePostgresZipf)}×`,
);
console.log(
  `group commit vs naive PostgreSQL (one hot key): ${ratio(results.tallyGroupCommitHot, results.naivePostgresHot)}×`,
);
console.log(
  `per call vs raw HINCRBY (Zipf): ${ratio(results.tallyPerCallZipf, results.rawHincrbyZipf)}×`,
);
