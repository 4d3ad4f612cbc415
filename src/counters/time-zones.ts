import { ValidationError } from '../errors.js';
import { bucketStart, utcDate, type Granularity } from './buckets.js';

/*
 * Calendar windows in an IANA time zone, as UTC instants. Tally keeps buckets in UTC; a query in
 * another zone sums the UTC buckets that fall inside each of its local windows, so it needs the
 * windows' boundaries: computed here from Node's time zone data (Intl), never PostgreSQL's, so
 * the store and the tests agree whatever tzdata PostgreSQL was built with.
 */

/** Formatters by canonical zone name: a few hundred zones at most. */
const formatters = new Map<string, Intl.DateTimeFormat>();

/** The zone's formatter (cached: building one costs ~50 µs); throws on a zone Intl lacks. */
function formatterOf(zone: string): Intl.DateTimeFormat {
  let formatter = formatters.get(zone);
  if (formatter === undefined) {
    formatter = new Intl.DateTimeFormat('en-US', {
      timeZone: zone,
      hourCycle: 'h23',
      era: 'short',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
    formatters.set(zone, formatter);
  }
  return formatter;
}

/**
 * The canonical name of an IANA time zone this Node knows ('europe/berlin' → 'Europe/Berlin');
 * throws on anything else. Only canonical names reach the formatter cache, so callers cannot
 * grow it with spellings of one zone.
 */
export function validateTimeZone(zone: unknown): string {
  if (typeof zone !== 'string' || zone.length === 0 || zone.length > 64) {
    throw new ValidationError('timeZone must be an IANA time zone name such as Europe/Berlin.');
  }
  try {
    const canonical = new Intl.DateTimeFormat('en-US', { timeZone: zone }).resolvedOptions()
      .timeZone;
    formatterOf(canonical);
    return canonical;
  } catch {
    throw new ValidationError(
      `timeZone ${JSON.stringify(zone.slice(0, 64))} is not an IANA time zone name (such as Europe/Berlin or UTC).`,
    );
  }
}

/** The zone's wall clock at `atMs`, written as if it were a UTC instant (ms). */
export function wallClockMs(zone: string, atMs: number): number {
  const parts: Record<string, string> = {};
  for (const part of formatterOf(zone).formatToParts(atMs)) parts[part.type] = part.value;
  const year = Number(parts.year);
  return (
    utcDate(parts.era === 'BC' ? 1 - year : year, Number(parts.month) - 1, Number(parts.day)) +
    Number(parts.hour) * 3_600_000 +
    Number(parts.minute) * 60_000 +
    Number(parts.second) * 1_000 +
    (((atMs % 1000) + 1000) % 1000)
  );
}

/** The zone's offset from UTC at `atMs`, ms. */
function offsetMs(zone: string, atMs: number): number {
  return wallClockMs(zone, atMs) - atMs;
}

const dayMs = 86_400_000;

/**
 * The first instant whose wall clock reads `wallMs` or later: the earlier of two when the clock
 * reads it twice (autumn), the end of the gap when it never does (spring, a midnight skipped).
 */
export function instantOfWallClock(zone: string, wallMs: number): number {
  // Offsets on either side of any transition near wallMs.
  const offsets = [offsetMs(zone, wallMs - dayMs), offsetMs(zone, wallMs + dayMs)];
  const candidates = offsets.map((offset) => wallMs - offset).sort((a, b) => a - b);
  const exact = candidates.find((atMs) => wallClockMs(zone, atMs) === wallMs);
  if (exact !== undefined) return exact;
  // In a gap: the clock jumps past wallMs somewhere between the candidates.
  let [low = wallMs, high = wallMs] = candidates;
  while (high - low > 1) {
    const middle = Math.floor((low + high) / 2);
    if (wallClockMs(zone, middle) >= wallMs) high = middle;
    else low = middle;
  }
  return high;
}

/** The wall clock's date at the start of its day or month, as a UTC-written ms value. */
function wallStart(granularity: 'day' | 'month', wallMs: number): number {
  const at = new Date(wallMs);
  return utcDate(
    at.getUTCFullYear(),
    at.getUTCMonth(),
    granularity === 'day' ? at.getUTCDate() : 1,
  );
}

function nextWallStart(granularity: 'day' | 'month', wallMs: number): number {
  const at = new Date(wallMs);
  return granularity === 'day'
    ? utcDate(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate() + 1)
    : utcDate(at.getUTCFullYear(), at.getUTCMonth() + 1, 1);
}

const sizeMs = { minute: 60_000, hour: 3_600_000 } as const;

/** Start of the zone's minute or hour holding `atMs`: where its wall clock last read :00. */
function fixedStart(zone: string, granularity: 'minute' | 'hour', atMs: number): number {
  const size = sizeMs[granularity];
  return atMs - ((((atMs + offsetMs(zone, atMs)) % size) + size) % size);
}

/**
 * The boundaries of the zone's `granularity` windows covering [fromMs, toMs): the start of the
 * window holding fromMs, every start after it before toMs, and the end of the last window.
 * Stops with an error past `maxWindows` windows, before listing more.
 */
export function windowBoundaries(
  zone: string,
  granularity: Granularity,
  fromMs: number,
  toMs: number,
  maxWindows: number,
): number[] {
  const boundaries: number[] = [];
  let next: (startMs: number) => number;
  if (granularity === 'minute' || granularity === 'hour') {
    const size = sizeMs[granularity];
    boundaries.push(fixedStart(zone, granularity, fromMs));
    next = (startMs) => {
      const end = startMs + size;
      // Whole-hour offset changes keep hours whole; a zone that moves its clock by 30 minutes
      // (Australia/Lord_Howe) has no hour there.
      if (fixedStart(zone, granularity, end) !== end) {
        throw new ValidationError(
          `${zone} moves its clocks by part of ${granularity === 'hour' ? 'an hour' : 'a minute'} ` +
            `near ${new Date(end).toISOString()}, so it has no whole ${granularity}s there; ` +
            'ask for a finer granularity.',
        );
      }
      return end;
    };
  } else {
    const wall = (atMs: number) => wallStart(granularity, atMs + offsetMs(zone, atMs));
    boundaries.push(instantOfWallClock(zone, wall(fromMs)));
    next = (startMs) => instantOfWallClock(zone, nextWallStart(granularity, wall(startMs)));
  }
  for (let start = boundaries[0] ?? fromMs; start < toMs;) {
    if (boundaries.length > maxWindows) {
      throw new ValidationError(
        `That period has more than ${maxWindows} ${granularity} windows; ask for at most ` +
          `${maxWindows} at a time.`,
      );
    }
    start = next(start);
    boundaries.push(start);
  }
  return boundaries;
}

/** The granularities Tally keeps, coarsest first: a query reads the fewest rows that fit. */
const coarsestFirst: readonly Granularity[] = ['month', 'day', 'hour', 'minute'];

/**
 * The coarsest kept granularity whose UTC buckets start on every boundary, so that each bucket
 * lies inside one window; undefined when none does (the store keeps nothing fine enough).
 */
export function sourceGranularity(
  kept: readonly Granularity[],
  boundaries: readonly number[],
): Granularity | undefined {
  return coarsestFirst.find(
    (granularity) =>
      kept.includes(granularity) &&
      boundaries.every((boundary) => bucketStart(granularity, boundary) === boundary),
  );
}
