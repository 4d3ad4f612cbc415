// How the benchmarks measure: closed-loop throughput, key distributions, percentiles, timers.

/** Zipf(1.0) over `n` keys: a few hot counters and a long tail, as API metering sees. */
export function zipf(n: number): () => number {
  const cumulative = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) cumulative[i] = sum += 1 / (i + 1);
  for (let i = 0; i < n; i++) cumulative[i] = (cumulative[i] ?? 0) / sum;
  return () => {
    const r = Math.random();
    let low = 0;
    let high = n - 1;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if ((cumulative[mid] ?? 1) < r) low = mid + 1;
      else high = mid;
    }
    return low;
  };
}

/**
 * Runs `op` in `concurrency` loops (that many operations in flight) for `seconds`; returns
 * completed operations per second.
 */
export async function throughput(
  concurrency: number,
  seconds: number,
  op: () => Promise<unknown>,
): Promise<number> {
  const started = performance.now();
  const deadline = started + seconds * 1_000;
  let done = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) {
        await op();
        done++;
      }
    }),
  );
  return done / ((performance.now() - started) / 1_000);
}

/** Milliseconds `fn` takes. */
export async function elapsedMs(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return performance.now() - started;
}

/**
 * Takes every measurement `rounds` times, in turns (so a slow spell of the machine falls on
 * all of them alike), and returns each one's median.
 */
export async function mediansInTurns(
  rounds: number,
  measurements: readonly (() => Promise<number>)[],
): Promise<number[]> {
  const samples = measurements.map((): number[] => []);
  for (let round = 0; round < rounds; round++) {
    for (const [i, measure] of measurements.entries()) samples[i]?.push(await measure());
  }
  return samples.map((values) => percentile(values, 50));
}

/** The p-th percentile (0–100) of `values`, nearest rank. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank] ?? Number.NaN;
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
