import { ValidationError } from '../errors.js';
import { bucketStart, granularities, isGranularity, type Granularity } from './buckets.js';
import { formatDuration } from './durations.js';

/**
 * How long the store keeps the buckets of each granularity (ms; null: forever). Older buckets
 * are pruned, so an increment dated before a kept granularity's retention is refused: its
 * bucket would be pruned or would be written back after the pruning.
 */
export type Retention = Readonly<Record<Granularity, number | null>>;

/** A retention as written by a user: durations such as '7d', ms, or null / 'forever'. */
export type RetentionInput = Partial<Record<Granularity, string | number | null>>;

const hourMs = 3_600_000;
const dayMs = 24 * hourMs;
const unitMs = { h: hourMs, d: dayMs, y: 365 * dayMs } as const;

/**
 * Unkey's choice for the same buckets: minute rows 7 days, hour rows 90 days, day rows about 3
 * years; months (a row per counter per month) forever. 100k counters counted every minute
 * make 144M minute rows a day: a store keeping them forever grows without bound.
 */
export const retentionDefaults: Retention = {
  minute: 7 * dayMs,
  hour: 90 * dayMs,
  day: 3 * unitMs.y,
  month: null,
};

/**
 * The shortest retention of each granularity: two of its buckets (a month counts 31 days), so
 * the bucket being counted and the one before it are never pruned.
 */
const shortestMs: Record<Granularity, number> = {
  minute: 2 * 60_000,
  hour: 2 * hourMs,
  day: 2 * dayMs,
  month: 62 * dayMs,
};
/** The longest a retention can be written: a hundred years (past that, write null). */
const longestMs = 100 * unitMs.y;

function durationMs(value: string | number | null, where: string, shortest: number): number | null {
  if (value === null || value === 'forever') return null;
  let ms: number | undefined;
  if (typeof value === 'number') ms = value;
  else {
    const match = /^([1-9][0-9]{0,5})([hdy])$/.exec(value);
    if (match !== null) ms = Number(match[1]) * unitMs[match[2] as keyof typeof unitMs];
  }
  if (ms === undefined || !Number.isSafeInteger(ms) || ms < shortest || ms > longestMs) {
    const shown = JSON.stringify(value);
    throw new ValidationError(
      `${where} is ${shown.length > 40 ? `${shown.slice(0, 40)}…` : shown}; write a duration ` +
        `such as '7d', '90d' or '3y' (h, d, y = 365 days) or a number of ms, from ` +
        `${formatDuration(shortest)} to 100 years, or null / 'forever' to keep them forever.`,
    );
  }
  return ms;
}

/** The retention of every granularity, from the defaults overridden by `input`. */
export function resolveRetention(input: RetentionInput | undefined, where: string): Retention {
  const untyped: unknown = input ?? {};
  if (typeof untyped !== 'object' || untyped === null || Array.isArray(untyped)) {
    throw new ValidationError(`${where} must be an object of granularity: duration.`);
  }
  const resolved: Record<Granularity, number | null> = { ...retentionDefaults };
  for (const [key, value] of Object.entries(untyped as Record<string, unknown>)) {
    if (!isGranularity(key)) {
      throw new ValidationError(
        `${where} has ${JSON.stringify(key).slice(0, 40)}; use ${granularities.join(', ')}.`,
      );
    }
    if (value !== null && typeof value !== 'string' && typeof value !== 'number') {
      throw new ValidationError(`${where}.${key} must be a duration, a number of ms or null.`);
    }
    resolved[key] = durationMs(value, `${where}.${key}`, shortestMs[key]);
  }
  return resolved;
}

/** `TALLY_RETENTION`: `minute=7d,hour=90d,day=3y,month=forever`, any of them, defaults otherwise. */
export function parseRetention(raw: string | undefined): Retention {
  // No prototype: `__proto__=7d` must be a key like any other (refused), not a lost assignment.
  const input = Object.create(null) as Record<string, string>;
  for (const part of (raw ?? '').split(',')) {
    if (part.trim() === '') continue;
    const [key = '', value, extra] = part.split('=').map((side) => side.trim());
    if (value === undefined || extra !== undefined || Object.hasOwn(input, key)) {
      throw new ValidationError(
        'TALLY_RETENTION must read like minute=7d,hour=90d,day=3y,month=forever (each once).',
      );
    }
    input[key] = value;
  }
  return resolveRetention(input, 'TALLY_RETENTION');
}

/**
 * The oldest instant an increment may be dated at so that no kept granularity's bucket of it
 * falls before its retention, at `nowMs`; undefined when every kept granularity keeps forever.
 */
export function oldestRetainedMs(
  retention: Retention,
  kept: readonly Granularity[],
  nowMs: number,
): { atMs: number; granularity: Granularity } | undefined {
  let oldest: { atMs: number; granularity: Granularity } | undefined;
  for (const granularity of kept) {
    const ms = retention[granularity];
    if (ms === null) continue;
    const atMs = nowMs - ms;
    if (oldest === undefined || atMs > oldest.atMs) oldest = { atMs, granularity };
  }
  return oldest;
}

/**
 * Where the oldest `granularity` bucket the retention keeps at `nowMs` starts: the one holding
 * `nowMs - retention`. Undefined when the granularity is kept forever.
 */
export function oldestKeptBucketMs(
  retention: Retention,
  granularity: Granularity,
  nowMs: number,
): number | undefined {
  const ms = retention[granularity];
  return ms === null ? undefined : bucketStart(granularity, nowMs - ms);
}

/**
 * Refuses a read of `granularity` buckets from `fromMs` on when its retention may have pruned
 * some of them: the bucket holding `nowMs - retention` is the oldest kept. A pruned bucket reads
 * as no row, so without this a read past the retention would answer a silent, wrong 0.
 */
export function checkRetained(
  retention: Retention,
  granularity: Granularity,
  fromMs: number,
  nowMs: number,
): void {
  const ms = retention[granularity];
  if (ms === null) return;
  const oldestKept = bucketStart(granularity, nowMs - ms);
  if (fromMs < oldestKept) {
    throw new ValidationError(
      `The read starts at ${new Date(fromMs).toISOString()}, but ${granularity} buckets are ` +
        `kept ${formatDuration(ms)} (option retention, TALLY_RETENTION): none before ` +
        `${new Date(oldestKept).toISOString()}. Start later, or read a coarser granularity.`,
    );
  }
}

/**
 * Refuses a read of `granularity` buckets from `fromMs` on when the store holds none complete
 * before `prunedBeforeMs`, the granularity's horizon (tally.bucket_horizons): pruned while the
 * retention was shorter (a retention lengthened later brings nothing back), or not kept yet
 * (a granularity added to the buckets later holds nothing from before).
 */
export function checkNotPruned(
  granularity: Granularity,
  fromMs: number,
  prunedBeforeMs: number | undefined,
): void {
  if (prunedBeforeMs === undefined || fromMs >= prunedBeforeMs) return;
  throw new ValidationError(
    `The read starts at ${new Date(fromMs).toISOString()}, but the store holds no complete ` +
      `${granularity} buckets before ${new Date(prunedBeforeMs).toISOString()}: pruned while ` +
      'the retention was shorter (option retention, TALLY_RETENTION), or not kept yet (option ' +
      'buckets, TALLY_BUCKETS). Start later, or read another granularity.',
  );
}
