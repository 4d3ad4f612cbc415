import { bucketStart, nextBucketStart, type Granularity } from './buckets.js';
import { bucketFieldPrefix } from './shard-keys.js';

/**
 * The buckets an increment at one instant lands in, one per configured granularity. Every
 * increment of the same hour (or of the smallest configured granularity) shares one set, so
 * the hot path neither recomputes calendar dates nor builds a field string per increment.
 */
export interface BucketSet {
  /** Identifies the set within a script call's table of sets. */
  readonly id: string;
  /** One field prefix per granularity, in configuration order; the counter name follows. */
  readonly prefixes: readonly string[];
}

/** Hands out bucket sets, keeping the one of the current period for increments without `at`. */
export class BucketSets {
  private current: { set: BucketSet; fromMs: number; untilMs: number } | undefined;

  constructor(private readonly granularities: readonly Granularity[]) {}

  /** The set of the buckets holding `atMs`. */
  at(atMs: number): BucketSet {
    const current = this.current;
    if (current !== undefined && atMs >= current.fromMs && atMs < current.untilMs) {
      return current.set;
    }
    // Where every bucket holding atMs overlaps: the same set serves that whole interval.
    let fromMs = -Infinity;
    let untilMs = Infinity;
    const prefixes = this.granularities.map((granularity) => {
      const start = bucketStart(granularity, atMs);
      fromMs = Math.max(fromMs, start);
      untilMs = Math.min(untilMs, nextBucketStart(granularity, start));
      return bucketFieldPrefix(granularity, start);
    });
    const set = { id: prefixes.join(''), prefixes };
    // Increments at `now` keep landing in the newest period; one with an old `at` must not
    // evict it.
    if (current === undefined || fromMs >= current.fromMs) this.current = { set, fromMs, untilMs };
    return set;
  }
}
