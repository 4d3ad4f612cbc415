import { ValidationError } from './errors.js';

/** The UTC time buckets usage can be kept in. */
export const granularities = ['minute', 'hour', 'day', 'month'] as const;
export type Granularity = (typeof granularities)[number];

export function isGranularity(value: unknown): value is Granularity {
  return typeof value === 'string' && (granularities as readonly string[]).includes(value);
}

/** Start (ms since the epoch, UTC) of the bucket holding `atMs`. */
export function bucketStart(granularity: Granularity, atMs: number): number {
  const at = new Date(atMs);
  switch (granularity) {
    case 'minute':
      return Math.floor(atMs / 60_000) * 60_000;
    case 'hour':
      return Math.floor(atMs / 3_600_000) * 3_600_000;
    case 'day':
      return Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate());
    case 'month':
      return Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), 1);
  }
}

/** Start of the bucket after the one starting at `startMs`. */
export function nextBucketStart(granularity: Granularity, startMs: number): number {
  const at = new Date(startMs);
  switch (granularity) {
    case 'minute':
      return startMs + 60_000;
    case 'hour':
      return startMs + 3_600_000;
    case 'day':
      return Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate() + 1);
    case 'month':
      return Date.UTC(at.getUTCFullYear(), at.getUTCMonth() + 1, 1);
  }
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

/** Accepts a Date or ms since the epoch; throws on anything that is not a valid instant. */
export function toEpochMs(value: Date | number, what: string): number {
  const ms = value instanceof Date ? value.getTime() : value;
  if (typeof ms !== 'number' || !Number.isSafeInteger(ms)) {
    throw new ValidationError(`${what} must be a valid Date or whole milliseconds since 1970.`);
  }
  return ms;
}
