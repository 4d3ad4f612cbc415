import { isGranularity, toEpochMs, utcDate, type Granularity } from '../counters/buckets.js';
import {
  controlCharacters,
  parseCounterName,
  quoted,
  validateName,
} from '../counters/counter-name.js';
import {
  instantOfWallClock,
  sourceGranularity,
  validateTimeZone,
  windowBoundaries,
} from '../counters/time-zones.js';
import { createHash } from 'node:crypto';
import { ValidationError } from '../errors.js';
import { fieldSeparator } from '../redis/shard-keys.js';
import type { Selection } from '../counters/selection.js';
import { checkRetained } from '../counters/retention.js';
import type { ResolvedConfig } from '../config.js';

export type { Selection };

/*
 * A usage query as the caller writes it, and the checked, resolved form the engine reads with:
 * which counters, grouped how, over which windows, in which order, from where. Everything a
 * query can get wrong is found here, before Redis or PostgreSQL is asked anything.
 */

export type LabelValue = string | number | boolean;
export type QueryGranularity = Granularity | 'total';
export type Instant = Date | number | string;

/** Which counters: the labelled counters of a base name, or plain names by prefix. */
export interface CounterSelection {
  /** The base name of labelled counters (`api_calls` of `api_calls{tenant="acme"}`). */
  counter?: string;
  /** Plain (unlabelled) names starting with this. */
  prefix?: string;
  /** Per label: the value, or any of the values, a counter must have (labelled counters). */
  where?: Readonly<Record<string, LabelValue | readonly LabelValue[]>>;
}

export interface UsageQueryInput extends CounterSelection {
  /** Label keys to group by; none sums every counter selected into one row. */
  groupBy?: readonly string[];
  /**
   * Start (inclusive) and end (exclusive): a Date, ms since 1970, or ISO 8601. A date or a
   * date-time without an offset is read on the query's time zone's clock.
   */
  from: Instant;
  to: Instant;
  granularity: QueryGranularity;
  /** IANA time zone of the calendar windows; default UTC. */
  timeZone?: string;
  /** Rows in group order (the groupBy labels, byte order), or by value; default group. */
  orderBy?: 'group' | 'value';
  order?: 'asc' | 'desc';
  /** Groups per page: default 100 (fewer when 100 × windows would pass 100,000), at most 10,000. */
  limit?: number;
  /** `nextCursor` of the page before. */
  cursor?: string;
}

export interface UsageWindow {
  start: Date;
  value: number;
}

export interface UsageRow {
  /** The plain counter's name (prefix queries). */
  counter?: string;
  /** The groupBy labels' values (null: the counters of the group lack that label). */
  labels: Record<string, string | null>;
  /** The sum of `buckets`. */
  value: number;
  /** One per window, empty windows included; `total` has one, starting at `from`. */
  buckets: UsageWindow[];
}

export interface UsagePage {
  rows: UsageRow[];
  /** Pass as `cursor` for the next page; null on the last page. */
  nextCursor: string | null;
}

export const queryLimits = {
  defaultGroups: 100,
  maxGroups: 10_000,
  /** Groups × windows on one page: the page is built in memory. */
  maxCells: 100_000,
  maxWindows: 10_000,
  maxWhereValues: 1_000,
  maxGroupBy: 8,
  maxCursorLength: 2_048,
} as const;

export interface ResolvedQuery {
  selection: Selection;
  granularity: QueryGranularity;
  timeZone: string;
  /** The windows' starts, then the end of the last window (UTC ms). */
  boundaries: readonly number[];
  /** The UTC buckets the windows are summed from. */
  source: Granularity;
  orderBy: 'group' | 'value';
  descending: boolean;
  limit: number;
  /** Identifies the query a cursor was made for. */
  fingerprint: string;
  after: CursorPosition | undefined;
}

/** Where a page ended: the last row's group key, and its value when ordered by value. */
export interface CursorPosition {
  key: string;
  value?: string;
}

const labelKey = /^[A-Za-z_][A-Za-z0-9_]*$/;

function validateLabelKey(key: unknown, what: string): string {
  if (typeof key !== 'string' || !labelKey.test(key) || key.length > 64) {
    throw new ValidationError(
      `${what} ${typeof key === 'string' ? quoted(key.slice(0, 64)) : typeof key} is not a label key: ` +
        'use letters, digits and _ (not first), at most 64 characters.',
    );
  }
  return key;
}

function labelValue(value: unknown, key: string): string {
  if (!['string', 'number', 'boolean'].includes(typeof value)) {
    throw new ValidationError(
      `where.${key} must be a string, number or boolean, or a list of them.`,
    );
  }
  // Stored as canonicalName stores them: String(value). A name holds no control character, so
  // a value with one matches nothing: refused, rather than sent to the store.
  const text = String(value);
  if (controlCharacters.test(text) || !text.isWellFormed() || Buffer.byteLength(text) > 256) {
    throw new ValidationError(
      `where.${key} has a value no counter can have (control characters, or over 256 bytes).`,
    );
  }
  return text;
}

/** The selection of a query or a listing; `groupBy` only for queries. */
export function resolveSelection(
  input: CounterSelection,
  groupBy: readonly string[] | undefined,
): Selection {
  const { counter, prefix, where } = input;
  if ((counter === undefined) === (prefix === undefined)) {
    throw new ValidationError(
      'Name either counter (the base name of labelled counters) or prefix (plain names), not both.',
    );
  }
  if (prefix !== undefined) {
    if (where !== undefined || (groupBy !== undefined && groupBy.length > 0)) {
      throw new ValidationError(
        'where and groupBy select labels, which plain names have none of: use counter, not prefix.',
      );
    }
    if (prefix !== '') validateName(prefix, 'A prefix');
    return { kind: 'plain', prefix };
  }
  const base = validateName(counter, 'A counter name');
  if (/[{}]/.test(base)) {
    throw new ValidationError(
      `counter is the base name of labelled counters (${JSON.stringify(base)} has braces); ` +
        'select labels with where.',
    );
  }
  const untypedWhere: unknown = where; // callers from plain JavaScript or JSON
  if (
    untypedWhere !== undefined &&
    (typeof untypedWhere !== 'object' || untypedWhere === null || Array.isArray(untypedWhere))
  ) {
    throw new ValidationError('where must be an object of label → value or list of values.');
  }
  const conditions = Object.entries(where ?? {})
    .map(([key, wanted]): [string, string[]] => {
      validateLabelKey(key, 'where has');
      const values = Array.isArray(wanted) ? (wanted as unknown[]) : [wanted];
      if (values.length === 0 || values.length > queryLimits.maxWhereValues) {
        throw new ValidationError(
          `where.${key} must list 1 to ${queryLimits.maxWhereValues} values.`,
        );
      }
      return [key, [...new Set(values.map((value) => labelValue(value, key)))]];
    })
    .sort(([a], [b]) => (a < b ? -1 : 1));
  const keys = groupBy ?? [];
  if (!Array.isArray(keys) || keys.length > queryLimits.maxGroupBy) {
    throw new ValidationError(`groupBy must list at most ${queryLimits.maxGroupBy} label keys.`);
  }
  keys.forEach((key) => validateLabelKey(key, 'groupBy has'));
  if (new Set(keys).size !== keys.length) {
    throw new ValidationError('groupBy lists a label twice.');
  }
  return { kind: 'labelled', base, where: conditions, groupBy: keys };
}

/**
 * `label=value` conditions as written in a link or on a command line (a label repeated: any
 * of its values) as a query's where.
 */
export function whereOf(conditions: string | readonly string[]): Record<string, string[]> {
  // No prototype: a label may be named `constructor`.
  const where: Record<string, string[]> = Object.create(null) as Record<string, string[]>;
  for (const condition of typeof conditions === 'string' ? [conditions] : conditions) {
    const split = condition.indexOf('=');
    if (split < 1) {
      throw new ValidationError(`where ${quoted(condition.slice(0, 64))} must be label=value.`);
    }
    (where[condition.slice(0, split)] ??= []).push(condition.slice(split + 1));
  }
  return where;
}

/** groupBy as written in a link or on a command line: comma-separated, or repeated. */
export function groupByOf(raw: string | readonly string[]): string[] {
  return (typeof raw === 'string' ? [raw] : raw).flatMap((part) => part.split(',')).filter(Boolean);
}

const isoInstant =
  /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:?\d{2})?)?$/;

/**
 * An instant from a Date, ms or ISO 8601 text. Text without an offset is a wall-clock time in
 * `zone` ('2026-11-01' is the zone's midnight), the way a billing period is written.
 */
export function parseInstant(value: unknown, what: string, zone: string): number {
  if (typeof value !== 'string') return toEpochMs(value as Date | number, what);
  const match = isoInstant.exec(value);
  const refuse = () =>
    new ValidationError(
      `${what} ${JSON.stringify(value.slice(0, 40))} is not an ISO 8601 date or date-time ` +
        '(2026-11-01, 2026-11-01T10:00:00Z, 2026-11-01T11:00+01:00).',
    );
  if (match === null) throw refuse();
  const [, year, month, day, hour = '0', minute = '0', second = '0', fraction = '0', offset] =
    match.map((part) => part);
  const fields = [year, month, day, hour, minute, second].map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const [y, mo, d, h, mi, s] = fields;
  const dateMs = utcDate(y, mo - 1, d);
  if (mo < 1 || mo > 12 || new Date(dateMs).getUTCDate() !== d || h > 23 || mi > 59 || s > 59) {
    throw refuse();
  }
  // Finer than milliseconds (PostgreSQL and Python write microseconds): cut to milliseconds.
  const wallMs =
    dateMs + h * 3_600_000 + mi * 60_000 + s * 1_000 + Number(fraction.slice(0, 3).padEnd(3, '0'));
  if (offset === undefined) return toEpochMs(instantOfWallClock(zone, wallMs), what);
  if (offset === 'Z') return toEpochMs(wallMs, what);
  const sign = offset.startsWith('-') ? -1 : 1;
  const [offsetHours, offsetMinutes] = [Number(offset.slice(1, 3)), Number(offset.slice(-2))];
  if (offsetHours > 18 || offsetMinutes > 59) throw refuse();
  const offsetMs = sign * (offsetHours * 3_600_000 + offsetMinutes * 60_000);
  return toEpochMs(wallMs - offsetMs, what);
}

/** Reads the windows of a query: their boundaries, and the kept buckets they are summed from. */
function resolveWindows(
  input: UsageQueryInput,
  { buckets: kept, retention }: Pick<ResolvedConfig, 'buckets' | 'retention'>,
  zone: string,
): { boundaries: number[]; source: Granularity } {
  const granularity: unknown = input.granularity;
  if (granularity !== 'total' && !isGranularity(granularity)) {
    throw new ValidationError(
      `granularity ${JSON.stringify(granularity)} is not one of minute, hour, day, month, total.`,
    );
  }
  const fromMs = parseInstant(input.from, 'from', zone);
  const toMs = parseInstant(input.to, 'to', zone);
  if (toMs <= fromMs) throw new ValidationError('A query needs from < to.');
  const boundaries =
    granularity === 'total'
      ? [fromMs, toMs]
      : windowBoundaries(zone, granularity, fromMs, toMs, queryLimits.maxWindows);
  const source = sourceGranularity(kept, boundaries);
  if (source === undefined) {
    const finest = kept.at(-1);
    const misaligned = boundaries.find(
      (boundary) => finest === undefined || sourceGranularity([finest], [boundary]) === undefined,
    );
    const at = misaligned === undefined ? '' : ` at ${new Date(misaligned).toISOString()}`;
    throw new ValidationError(
      (granularity === 'total'
        ? `The period's bound${at} does not fall`
        : `${zone}'s ${granularity} windows start${at}, which does not fall`) +
        ` on the start of a kept UTC bucket (${kept.join(', ') || 'none'}); ` +
        (granularity === 'total'
          ? 'move from and to onto bucket boundaries, or keep finer buckets (option buckets, TALLY_BUCKETS).'
          : "keep 'minute' buckets (option buckets, TALLY_BUCKETS) to query in this zone."),
    );
  }
  checkRetained(retention, source, boundaries[0] ?? fromMs, Date.now());
  return { boundaries, source };
}

/**
 * Checks and resolves a query. A `page` is built in memory, so its groups × windows are capped;
 * a `stream` holds one batch of rows at a time, so only its windows are.
 */
export function resolveQuery(
  input: UsageQueryInput,
  config: Pick<ResolvedConfig, 'buckets' | 'retention'>,
  mode: 'page' | 'stream',
): ResolvedQuery {
  const untyped: unknown = input; // callers from plain JavaScript
  if (typeof untyped !== 'object' || untyped === null) {
    throw new ValidationError('A query must be an object.');
  }
  const selection = resolveSelection(input, input.groupBy);
  const timeZone = validateTimeZone(input.timeZone ?? 'UTC');
  const { boundaries, source } = resolveWindows(input, config, timeZone);
  const orderBy: unknown = input.orderBy ?? 'group';
  if (orderBy !== 'group' && orderBy !== 'value') {
    throw new ValidationError(`orderBy ${JSON.stringify(orderBy)} is not group or value.`);
  }
  const order: unknown = input.order ?? (orderBy === 'value' ? 'desc' : 'asc');
  if (order !== 'asc' && order !== 'desc') {
    throw new ValidationError(`order ${JSON.stringify(order)} is not asc or desc.`);
  }
  const windows = boundaries.length - 1;
  // The default fits a page of any period: 100 groups, fewer when they have many windows.
  const limit =
    input.limit ??
    Math.max(1, Math.min(queryLimits.defaultGroups, Math.floor(queryLimits.maxCells / windows)));
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > queryLimits.maxGroups) {
    throw new ValidationError(`limit must be a whole number from 1 to ${queryLimits.maxGroups}.`);
  }
  if (mode === 'page' && limit * windows > queryLimits.maxCells) {
    throw new ValidationError(
      `A page of ${limit} groups × ${windows} windows is ${limit * windows} values; ` +
        `one page holds at most ${queryLimits.maxCells}: lower limit, or ask for a coarser ` +
        'granularity or a shorter period (or stream the rows as CSV).',
    );
  }
  // What a cursor belongs to: the same counters, windows and order (not the page size).
  const fingerprint = createHash('sha256')
    .update(JSON.stringify([selection, input.granularity, timeZone, boundaries, orderBy, order]))
    .digest('base64url')
    .slice(0, 16);
  return {
    selection,
    granularity: input.granularity,
    timeZone,
    boundaries,
    source,
    orderBy,
    descending: order === 'desc',
    limit,
    fingerprint,
    after:
      input.cursor === undefined ? undefined : decodeCursor(input.cursor, orderBy, fingerprint),
  };
}

/*
 * Group keys: one string per group that sorts as its labels do, byte by byte — the order of
 * PostgreSQL's COLLATE "C", in which pages are cut. Each label value is written as \x02 + value
 * (\x01 for a counter without the label, so those sort first), joined by \x1f. Label values
 * hold no control characters (names cannot), so the separators never occur inside one.
 */
const absent = '\u0001';
const present = '\u0002';

export function groupKey(values: readonly (string | undefined)[]): string {
  return values
    .map((value) => (value === undefined ? absent : present + value))
    .join(fieldSeparator);
}

/** Compares two strings in code point order (UTF-8 byte order), not JavaScript's UTF-16. */
export function compareCodePoints(a: string, b: string): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    // Surrogates (astral code points) come after U+E000–U+FFFF in code point order.
    const rank = (unit: number) =>
      unit >= 0xd800 && unit < 0xe000 ? unit + 0x2000 : unit >= 0xe000 ? unit - 0x800 : unit;
    return rank(x) - rank(y);
  }
  return a.length - b.length;
}

/** A counter's label, own properties only (`constructor` is a label key like any other). */
export function labelOf(labels: Readonly<Record<string, string>>, key: string): string | undefined {
  return Object.hasOwn(labels, key) ? labels[key] : undefined;
}

/** A matcher for the counters a selection takes: the group key of a counter, or undefined. */
export function counterMatcher(selection: Selection): (counter: string) => string | undefined {
  if (selection.kind === 'plain') {
    const { prefix } = selection;
    return (counter) =>
      counter.startsWith(prefix) && parseCounterName(counter).labels === undefined
        ? groupKey([counter])
        : undefined;
  }
  const { base, where, groupBy } = selection;
  const opening = `${base}{`;
  return (counter) => {
    if (!counter.startsWith(opening)) return undefined;
    const parsed = parseCounterName(counter);
    const labels = parsed.labels;
    if (labels === undefined || parsed.base !== base) return undefined;
    for (const [key, values] of where) {
      const value = labelOf(labels, key);
      if (value === undefined || !values.includes(value)) return undefined;
    }
    return groupKey(groupBy.map((key) => labelOf(labels, key)));
  };
}

/** A literal for a Redis glob pattern: its special characters escaped. */
const globLiteral = (text: string) => text.replace(/[*?[\]\\]/g, '\\$&');

/**
 * A Redis MATCH pattern every field of a selected counter matches (`<bucket tag><counter>`), so
 * Redis returns only candidates: the counter's start after the tag's separator, then each label
 * with one wanted value as canonicalName writes it, in key order as canonical names hold them.
 */
/** A Redis glob every counter name the selection takes matches (the caller filters exactly). */
export function counterPattern(selection: Selection): string {
  if (selection.kind === 'plain') return `${globLiteral(selection.prefix)}*`;
  const labels = selection.where
    .filter(([, values]) => values.length === 1)
    .map(([key, values]) => `*${globLiteral(`${key}=${JSON.stringify(values[0])}`)}`);
  return `${globLiteral(`${selection.base}{`)}${labels.join('')}*`;
}

/** The same for pending fields (a bucket tag, the separator, the counter). */
export function fieldPattern(selection: Selection): string {
  return `*${fieldSeparator}${counterPattern(selection)}`;
}

/**
 * The identity of a selection's rows (a plain counter's name, or the groupBy labels' values)
 * from their group keys. Worked out once per query: an export builds one per row.
 */
export function rowIdentities(
  selection: Selection,
): (key: string) => Pick<UsageRow, 'counter' | 'labels'> {
  if (selection.kind === 'plain') return (key) => ({ counter: key.slice(1), labels: {} });
  const { groupBy } = selection;
  const valueOf = (part: string | undefined) =>
    part === undefined || part === absent ? null : part.slice(1);
  // Assignment would call Object.prototype's __proto__ setter, not make a label of that name.
  if (groupBy.includes('__proto__')) {
    return (key) => {
      const parts = key.split(fieldSeparator);
      return { labels: Object.fromEntries(groupBy.map((label, i) => [label, valueOf(parts[i])])) };
    };
  }
  return (key) => {
    const labels: Record<string, string | null> = {};
    if (groupBy.length > 0) {
      const parts = key.split(fieldSeparator);
      for (let i = 0; i < groupBy.length; i++) labels[groupBy[i] ?? ''] = valueOf(parts[i]);
    }
    return { labels };
  };
}

export function encodeCursor(
  query: Pick<ResolvedQuery, 'orderBy' | 'fingerprint'>,
  position: CursorPosition,
): string {
  return Buffer.from(
    JSON.stringify({ o: query.orderBy, q: query.fingerprint, ...position }),
  ).toString('base64url');
}

function decodeCursor(
  cursor: unknown,
  orderBy: 'group' | 'value',
  fingerprint: string,
): CursorPosition {
  const malformed = () =>
    new ValidationError('cursor is not a nextCursor this query returned; start without one.');
  if (typeof cursor !== 'string' || cursor.length > queryLimits.maxCursorLength) throw malformed();
  let decoded: unknown;
  try {
    decoded = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    throw malformed();
  }
  const { o, q, key, value } = (decoded ?? {}) as {
    o?: unknown;
    q?: unknown;
    key?: unknown;
    value?: unknown;
  };
  // Compared with keys PostgreSQL builds, as text, which cannot hold NUL.
  if (
    typeof key !== 'string' ||
    key.includes('\u0000') ||
    !key.isWellFormed() ||
    (value !== undefined && (typeof value !== 'string' || !/^-?\d{1,20}$/.test(value)))
  ) {
    throw malformed();
  }
  if (o !== orderBy || (orderBy === 'value') !== (value !== undefined)) {
    throw new ValidationError(
      `cursor is from a query ordered ${o === 'value' ? 'by value' : 'by group'}, not by ${orderBy}.`,
    );
  }
  if (q !== fingerprint) {
    throw new ValidationError(
      'cursor is from another query (other counters, windows or order): pass the query it came from.',
    );
  }
  return value === undefined ? { key } : { key, value };
}
