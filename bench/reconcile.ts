// Reconcile (repair) of a store whose Redis lost everything, and the Redis memory its totals
// then take per counter.
import { Redis } from 'ioredis';
import { createTally } from '../src/index.js';
import { freshDatabase, type BenchContext } from './support/context.js';
import { counterName, dirty } from './flush.js';
import { elapsedMs } from './support/measure.js';
import { human, type BenchmarkResult } from './support/results.js';

async function usedMemory(redis: Redis): Promise<number> {
  const info = await redis.info('memory');
  return Number(/used_memory:(\d+)/.exec(info)?.[1]);
}

export async function reconcile(ctx: BenchContext): Promise<BenchmarkResult> {
  const n = ctx.quick ? 100_000 : 1_000_000;
  const admin = new Redis(ctx.redis.url);
  const tally = await createTally({
    redis: ctx.redis.url,
    postgres: await freshDatabase(ctx),
    shards: 16,
    keyPrefix: 'reconcile',
  });
  const figures: Record<string, number> = {};
  try {
    await dirty(tally, n);
    await tally.flush();
    // Redis loses everything (other benchmarks' keys too, so the memory figure is this
    // store's alone).
    await admin.flushall();
    const before = await usedMemory(admin);
    figures['reconcile repair ms'] = await elapsedMs(() => tally.reconcile({ repair: true }));
    figures['redis bytes per counter'] = ((await usedMemory(admin)) - before) / n;
    const sample = await tally.getMany([counterName(0), counterName(n - 1)]);
    if (sample.some((value) => value !== 1)) throw new Error(`reconcile rebuilt ${sample.join()}`);
  } finally {
    await tally.close();
    admin.disconnect();
  }
  const ms = figures['reconcile repair ms'];
  const bytes = figures['redis bytes per counter'];
  return {
    name: 'reconcile and memory',
    figures,
    checks: [
      {
        benchmark: `reconcile (repair) of ${human(n)} counters`,
        measured: `${(ms / 1000).toFixed(1)} s (${human((n / ms) * 1000)} counters/s)`,
        target: ctx.quick ? '≤ 1 s (10 s for 1M)' : '≤ 10 s',
        met: ms <= (n / 1_000_000) * 10_000,
      },
      {
        benchmark: 'Redis memory of the totals',
        measured: `${bytes.toFixed(0)} bytes per counter (16-character names, 16 shards)`,
        target: '≤ 100 bytes per counter',
        met: bytes <= 100,
      },
    ],
  };
}
