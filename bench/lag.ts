// Flush lag under sustained load: the library offers a steady rate of increments (open loop)
// while a `tally worker` flushes every interval; the oldest unflushed delta's age is sampled.
import { createTally } from '../src/index.js';
import { startWorker } from '../test/support/tally-process.js';
import { freshDatabase, type BenchContext } from './support/context.js';
import { percentile, zipf } from './support/measure.js';
import { offerOpenLoop, sampleFlushLag } from './support/open-loop.js';
import { human, type BenchmarkResult } from './support/results.js';

const rate = 100_000;
const flushIntervalMs = 1_000;

export async function flushLag(ctx: BenchContext): Promise<BenchmarkResult> {
  const seconds = ctx.quick ? 10 : 30;
  const warmUpMs = 5_000;
  const database = await freshDatabase(ctx);
  const env = {
    REDIS_URL: ctx.redis.url,
    DATABASE_URL: database,
    TALLY_KEY_PREFIX: 'lag',
    TALLY_FLUSH_INTERVAL_MS: String(flushIntervalMs),
    TALLY_LOG_LEVEL: 'info',
    TALLY_ACCEPT_REDIS_LOSS: ctx.redis.persistence === 'aof-always' ? 'none' : 'bounded',
  };
  const worker = startWorker(env);
  await worker.waitForLog('start-up', (line) => line.msg === 'flush worker started');
  const tally = await createTally({ redis: ctx.redis.url, postgres: database, keyPrefix: 'lag' });
  const pick = zipf(100_000);
  const started = performance.now();
  const deadline = started + seconds * 1_000;
  const [lags, { offered, failed }] = await Promise.all([
    sampleFlushLag(tally, deadline),
    offerOpenLoop(rate, deadline, () => tally.incr(`c${pick()}`)),
  ]);
  const samples = lags.filter((s) => s.atMs - started > warmUpMs).map((s) => s.lagMs);
  await tally.close();
  worker.kill('SIGTERM');
  await worker.exited;

  const p99 = percentile(samples, 99);
  const figures = {
    'offered per second': offered / seconds,
    'failed increments': failed,
    'lag p50 ms': percentile(samples, 50),
    'lag p99 ms': p99,
    'lag max ms': Math.max(...samples),
  };
  if (failed > 0) throw new Error(`${failed} increments failed under the lag load`);
  return {
    name: 'flush lag',
    figures,
    checks: [
      {
        benchmark: `flush lag at ${human(rate)} increments/s sustained (interval ${flushIntervalMs} ms)`,
        measured: `p99 ${p99.toFixed(0)} ms, p50 ${figures['lag p50 ms'].toFixed(0)} ms, max ${figures['lag max ms'].toFixed(0)} ms over ${seconds - warmUpMs / 1000} s (${human(figures['offered per second'])}/s offered)`,
        target: `p99 ≤ ${2 * flushIntervalMs} ms`,
        met: p99 <= 2 * flushIntervalMs,
      },
    ],
  };
}
