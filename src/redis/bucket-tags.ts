import {
  bucketStart,
  isGranularity,
  nextBucketStart,
  type Granularity,
} from '../counters/buckets.js';
import { fieldSeparator } from './shard-keys.js';

/*
 * Pending deltas are kept per counter and per *bucket tag*: the configured granularities and the
 * start of the smallest bucket an increment fell in, e.g. `hour,day␟1763690400000␟`. The
 * granularities nest (minute ⊂ hour ⊂ day ⊂ month, all UTC), so that one start fixes the
 * bucket of every granularity, and the hot path writes one pending field per increment
 * (`<tag><counter>`) however many granularities are configured; the flush expands it into
 * bucket rows. The tag names its granularities, so a batch is flushed as it was counted even
 * if the configuration changed since. With no granularities configured the tag is empty and
 * the field is the bare counter name.
 */

/** What one pending field holds: its counter, and the buckets its delta belongs to. */
export interface PendingField {
  counter: string;
  /** The tag the field starts with ('' for none). */
  tag: string;
}

/** The buckets a tag stands for: one start per granularity, in the tag's order. */
export interface TagBuckets {
  granularities: readonly Granularity[];
  starts: readonly number[];
}

/** The tag of the buckets holding `atMs`. */
export function bucketTag(granularities: readonly Granularity[], atMs: number): string {
  return tagOf(granularities, Math.max(...granularities.map((g) => bucketStart(g, atMs))));
}

/** The tag of the granularities whose smallest bucket starts at `smallestStart`. */
function tagOf(granularities: readonly Granularity[], smallestStart: number): string {
  if (granularities.length === 0) return '';
  return `${granularities.join(',')}${fieldSeparator}${smallestStart}${fieldSeparator}`;
}

/** Splits a pending field into its tag and counter (counter names cannot hold the separator). */
export function parsePendingField(field: string): PendingField {
  const end = field.lastIndexOf(fieldSeparator) + 1;
  return { tag: field.slice(0, end), counter: field.slice(end) };
}

/** The buckets of a tag; throws on a tag Tally did not write. */
export function tagBuckets(tag: string): TagBuckets {
  if (tag === '') return { granularities: [], starts: [] };
  const [names = '', start = '', rest] = tag.split(fieldSeparator);
  const granularities = names.split(',');
  const smallestStart = Number(start);
  if (rest !== '' || !granularities.every(isGranularity) || !Number.isSafeInteger(smallestStart)) {
    throw new Error(`Not a bucket tag: ${JSON.stringify(tag)}`);
  }
  return {
    granularities,
    starts: granularities.map((granularity) => bucketStart(granularity, smallestStart)),
  };
}

/**
 * Hands out bucket tags, keeping the one of the current period for increments without `at`:
 * every increment of the same smallest bucket shares one tag, so the hot path neither
 * recomputes calendar dates nor builds a string per increment. Only `now` moves the kept tag:
 * an increment with its own `at` (past or future) never displaces it (one dated 9999 once
 * pinned it, and every plain increment after it was 10× slower).
 */
export class BucketTags {
  private current: { tag: string; fromMs: number; untilMs: number } | undefined;

  constructor(private readonly granularities: readonly Granularity[]) {}

  /** The tag of the buckets holding `nowMs`, the current time. */
  now(nowMs: number): string {
    const current = this.current;
    if (current !== undefined && nowMs >= current.fromMs && nowMs < current.untilMs) {
      return current.tag;
    }
    const found = this.period(nowMs);
    this.current = found;
    return found.tag;
  }

  /** The tag of the buckets holding `atMs`, any instant. */
  at(atMs: number): string {
    return this.period(atMs).tag;
  }

  /** Where every bucket holding atMs overlaps: the same tag serves that whole interval. */
  private period(atMs: number): { tag: string; fromMs: number; untilMs: number } {
    let fromMs = -Infinity;
    let untilMs = Infinity;
    for (const granularity of this.granularities) {
      const start = bucketStart(granularity, atMs);
      fromMs = Math.max(fromMs, start);
      untilMs = Math.min(untilMs, nextBucketStart(granularity, start));
    }
    // The latest start among the buckets holding atMs is the smallest bucket's.
    return { tag: tagOf(this.granularities, fromMs), fromMs, untilMs };
  }
}
