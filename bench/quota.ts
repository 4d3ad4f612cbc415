// Periodic quotas on the hot path: an increment under a hard monthly quota against a plain one
// and against one limited on its total (which, like it, is never merged with others), same
// counters, same concurrency, measured in turns in one run; and a plain increment of a counter
// that has a quota (it adds to the period's usage) against one of a store without quotas.
import { createTally, type LimitOptions } from '../src/index.js';
import { freshDatabase, type BenchContext } from './support/context.js';
import { mediansInTurns, throughput, zipf } from './support/measure.js';
import { ratioCheck, type BenchmarkResult } from './support/results.js';

export async function quotaIncrements(ctx: BenchContext): Promise<BenchmarkResult> {
  const counters = ctx.quick ? 2_000 : 10_000;
  const concurrency = 10_000;
  const pick = zipf(counters);
  const limit: LimitOptions = { max: Number.MAX_SAFE_INTEGER, per: 'month' };
  // Two stores: one whose counters all have a quota period, one that never saw a quota.
  const quoted = await createTally({
    redis: ctx.redis.url,
    postgres: await freshDatabase(ctx),
    keyPrefix: 'quota',
  });
  const plain = await createTally({
    redis: ctx.redis.url,
    postgres: await freshDatabase(ctx),
    keyPrefix: 'plain',
  });
  try {
    // Every counter's period seeded once (what a month's first increment of a counter pays).
    const names = Array.from({ length: counters }, (_, i) => `c${i}`);
    const seedStarted = performance.now();
    for (let i = 0; i < names.length; i += 1_000) {
      await quoted.incrMany(names.slice(i, i + 1_000).map((counter) => ({ counter, limit })));
    }
    const seedMs = performance.now() - seedStarted;
    await plain.incrMany(names.map((counter) => ({ counter })));

    const cap = Number.MAX_SAFE_INTEGER;
    const [limited, capped, plainInQuoted, plainAlone] = await mediansInTurns(3, [
      () => throughput(concurrency, ctx.seconds, () => quoted.incr(`c${pick()}`, 1, { limit })),
      () => throughput(concurrency, ctx.seconds, () => plain.incr(`c${pick()}`, 1, { limit: cap })),
      () => throughput(concurrency, ctx.seconds, () => quoted.incr(`c${pick()}`)),
      () => throughput(concurrency, ctx.seconds, () => plain.incr(`c${pick()}`)),
    ]);
    const figures = {
      'hard monthly quota @10000': limited ?? Number.NaN,
      'cap on the total @10000': capped ?? Number.NaN,
      'plain, counters with a quota @10000': plainInQuoted ?? Number.NaN,
      'plain, no quota in the store @10000': plainAlone ?? Number.NaN,
      'seeding, ms per counter': seedMs / counters,
    };
    const benchmark = `incr, 10k in flight, Zipf over ${counters / 1000}k counters`;
    return {
      name: 'quota',
      figures,
      checks: [
        ratioCheck(
          `${benchmark}, hard monthly quota`,
          figures['hard monthly quota @10000'],
          figures['plain, no quota in the store @10000'],
          'plain incr',
          0.15,
        ),
        ratioCheck(
          `${benchmark}, hard monthly quota`,
          figures['hard monthly quota @10000'],
          figures['cap on the total @10000'],
          'limit on the total',
          0.4,
        ),
        ratioCheck(
          `${benchmark}, plain incr of counters with a quota`,
          figures['plain, counters with a quota @10000'],
          figures['plain, no quota in the store @10000'],
          'plain incr',
          0.6,
        ),
      ],
    };
  } finally {
    await quoted.close();
    await plain.close();
  }
}
