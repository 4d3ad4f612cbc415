import { ValidationError } from '../errors.js';

/** The UTC time buckets usage can be kept in. */
export const granularities = ['minute', 'hour', 'day', 'month'] as const;
export type Granularity = (typeof granularities)[number];

export function isGranularity(value: unknown): value is Granularity {
  return typeof value === 'string' && (granularities as readonly string[]).includes(value);
}

const dayMs = 86_400_000;

/**
 * Ms since the epoch of a UTC date. Not `Date.UTC`: it maps the years 0–99 to 1900–1999, so
 * an increment at 0001-01-01 landed in 1901's buckets.
 */
export function utcDate(year: number, month: number, day: number): number {
  const date = new Date(0);
  date.setUTCFullYear(year, month, day);
  return date.getTime();
}

/** Start (ms since the epoch, UTC) of the bucket holding `atMs`. */
export function bucketStart(granularity: Granularity, atMs: number): number {
  switch (granularity) {
    case 'minute':
      return Math.floor(atMs / 60_000) * 60_000;
    case 'hour':
      return Math.floor(atMs / 3_600_000) * 3_600_000;
    case 'day':
      return Math.floor(atMs / dayMs) * dayMs;
    case 'month': {
      const at = new Date(atMs);
      return utcDate(at.getUTCFullYear(), at.getUTCMonth(), 1);
    }
  }
}

/** Start of the bucket after the one starting at `startMs`. */
export function nextBucketStart(granularity: Granularity, startMs: number): number {
  switch (granularity) {
    case 'minute':
      return startMs + 60_000;
    case 'hour':
      return startMs + 3_600_000;
    case 'day':
      return startMs + dayMs;
    case 'month': {
      const at = new Date(startMs);
      return utcDate(at.getUTCFullYear(), at.getUTCMonth() + 1, 1);
    }
  }
}

/**
 * How many buckets `bucketStarts` would list, computed without listing them: a request picks
 * the period, so its size is checked before any work is done for it.
 */
export function bucketCount(granularity: Granularity, fromMs: number, toMs: number): number {
  const first = bucketStart(granularity, fromMs);
  if (toMs <= first) return 0;
  if (granularity === 'month') {
    const from = new Date(first);
    const to = new Date(toMs);
    const months =
      (to.getUTCFullYear() - from.getUTCFullYear()) * 12 + to.getUTCMonth() - from.getUTCMonth();
    // `to` inside a month counts that month; `to` on its first instant does not.
    return months + (bucketStart('month', toMs) < toMs ? 1 : 0);
  }
  const size = nextBucketStart(granularity, 0);
  return Math.ceil((toMs - first) / size);
}

/** Every bucket start from the bucket holding `fromMs` up to, not including, `toMs`. */
export function bucketStarts(granularity: Granularity, fromMs: number, toMs: number): number[] {
  const starts: number[] = [];
  for (let start = bucketStart(granularity, fromMs); start < toMs;) {
    starts.push(start);
    start = nextBucketStart(granularity, start);
  }
  return starts;
}

/** The instants Tally takes: years 0000 to 9999 (ISO 8601's four-digit years). */
export const earliestInstantMs = utcDate(0, 0, 1);
export const latestInstantMs = utcDate(10_000, 0, 1) - 1;

/** Accepts a Date or ms since the epoch; throws on anything that is not a valid instant. */
export function toEpochMs(value: Date | number, what: string): number {
  const ms = value instanceof Date ? value.getTime() : value;
  if (
    typeof ms !== 'number' ||
    !Number.isSafeInteger(ms) ||
    ms < earliestInstantMs ||
    ms > latestInstantMs
  ) {
    throw new ValidationError(
      `${what} must be a valid Date or whole milliseconds since 1970, in the years 0000–9999.`,
    );
  }
  return ms;
}
