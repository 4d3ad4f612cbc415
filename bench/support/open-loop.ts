// Sustained load as clients give it: an open loop offering a steady rate whatever is still in
// flight (a closed loop would slow down with the system and hide lag), and the flush lag
// sampled meanwhile.
import type { Tally } from '../../src/index.js';
import { sleep } from './measure.js';

export interface OfferedLoad {
  offered: number;
  acknowledged: number;
  failed: number;
}

/**
 * Offers `rate` operations per second until `deadline` (performance.now()): each millisecond
 * tick offers what the rate owes since the start. Resolves once every offered one settled.
 */
export async function offerOpenLoop(
  rate: number,
  deadline: number,
  offer: () => Promise<unknown>,
): Promise<OfferedLoad> {
  const load: OfferedLoad = { offered: 0, acknowledged: 0, failed: 0 };
  const started = performance.now();
  while (performance.now() < deadline) {
    const owed = Math.floor(((performance.now() - started) / 1_000) * rate) - load.offered;
    for (let i = 0; i < owed; i++) {
      load.offered++;
      offer().then(
        () => load.acknowledged++,
        () => load.failed++,
      );
    }
    await sleep(1);
  }
  while (load.acknowledged + load.failed < load.offered) await sleep(10);
  return load;
}

/**
 * The age of the oldest unflushed delta (any shard), every 100 ms until `deadline`, each with
 * when it was taken (performance.now()).
 */
export async function sampleFlushLag(
  tally: Tally,
  deadline: number,
): Promise<{ atMs: number; lagMs: number }[]> {
  const samples: { atMs: number; lagMs: number }[] = [];
  while (performance.now() < deadline) {
    await sleep(100);
    const status = await tally.status();
    const lagMs = Math.max(...status.shards.map((shard) => shard.oldestUnflushedAgeMs));
    samples.push({ atMs: performance.now(), lagMs });
  }
  return samples;
}
