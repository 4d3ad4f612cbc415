import { ValidationError } from '../errors.js';
import { bucketStart, type Granularity } from './buckets.js';
import { formatDuration } from './durations.js';
import {
  quotaPeriodOf,
  resolveQuotaPeriod,
  type QuotaPer,
  type QuotaPeriod,
  type QuotaPeriodSpec,
} from './quota-periods.js';
import type { Retention } from './retention.js';
import { sourceGranularity } from './time-zones.js';

/*
 * An increment's limit: a cap on the counter's total (`limit: 100`, or `{ max: 100 }`), or a
 * quota per period of a zone's calendar (`{ max: 10_000, per: 'month', timeZone, anchorDay }`).
 * Hard limits refuse an increment with `by ≥ 0` that would leave the usage above max (refunds
 * always pass); soft ones apply it and say it passed the limit.
 */

export const limitModes = ['hard', 'soft'] as const;
export type LimitMode = (typeof limitModes)[number];

/** A limit as a caller writes it. */
export interface LimitOptions {
  max: number;
  /** The period the quota resets on; without it the limit caps the counter's total. */
  per?: QuotaPer;
  /** The zone whose calendar the period follows (default UTC). */
  timeZone?: string;
  /** For `per: 'month'`: the day periods start on, 1–31 (past a month's end, its last day). */
  anchorDay?: number;
  /** 'hard' (default): refuse what would pass max. 'soft': apply, and report passing it. */
  mode?: LimitMode;
}

/** A validated limit, with the period of the increment's instant. */
export interface PreparedLimit {
  max: number;
  mode: LimitMode;
  /** A periodic limit's spec; undefined for a cap on the total. */
  spec: QuotaPeriodSpec | undefined;
  /** The period holding the increment's instant (periodic limits). */
  period: QuotaPeriod | undefined;
  /** The kept granularity a period's usage is read from (periodic limits). */
  granularity: Granularity | undefined;
  /** The limit's parameters, as the idempotency fingerprint keeps them. */
  key: string;
}

const limitProperties = new Set(['max', 'per', 'timeZone', 'anchorDay', 'mode']);

/** The longest period of each kind: a granularity kept shorter could not hold a whole one. */
const longestPeriodMs: Record<QuotaPer, number> = {
  minute: 60_000,
  hour: 3_600_000,
  // A day of a clock change is 25 hours.
  day: 25 * 3_600_000,
  month: (31 * 24 + 1) * 3_600_000,
};

/**
 * The most period kinds (per, zone, anchor) kept resolved; past it the cache starts over.
 * Each costs a few hundred bytes; 31 anchors × 4 kinds × 100 zones in use fit.
 */
const maxCachedSpecs = 16_384;

interface CachedSpec {
  spec: QuotaPeriodSpec;
  granularity: Granularity;
  /** The last period handed out: most increments fall in it. */
  current: QuotaPeriod;
}

/**
 * Validates limits and finds their periods, keeping per kind of period the one last handed
 * out (an increment without `at` almost always falls in it, and finding a month of a zone's
 * calendar costs several Intl calls).
 */
export class LimitResolver {
  private readonly specs = new Map<string, CachedSpec>();
  private readonly sources = new Map<string, Granularity>();

  constructor(
    private readonly buckets: readonly Granularity[],
    private readonly retention: Retention,
  ) {}

  resolve(limit: unknown, atMs: number, nowMs: number): PreparedLimit {
    if (typeof limit === 'number') {
      return totalCap(safeMax(limit, 'limit'), 'hard', String(limit));
    }
    if (typeof limit !== 'object' || limit === null || Array.isArray(limit)) {
      throw new ValidationError(
        'limit must be a whole number (a cap on the total) or an object { max, per?, timeZone?, ' +
          'anchorDay?, mode? }.',
      );
    }
    const given = limit as Record<string, unknown>;
    for (const property of Object.keys(given)) {
      if (!limitProperties.has(property)) {
        throw new ValidationError(
          `limit has no property ${JSON.stringify(property.slice(0, 40))}; use max, per, ` +
            'timeZone, anchorDay, mode.',
        );
      }
    }
    const max = safeMax(given.max, 'limit.max');
    const mode = given.mode ?? 'hard';
    if (!(limitModes as readonly unknown[]).includes(mode)) {
      throw new ValidationError(
        `limit.mode must be hard or soft, got ${typeof mode === 'string' ? JSON.stringify(mode.slice(0, 40)) : typeof mode}.`,
      );
    }
    const suffix = mode === 'soft' ? '/soft' : '';
    if (given.per === undefined) {
      if (given.timeZone !== undefined || given.anchorDay !== undefined) {
        throw new ValidationError('limit.timeZone and limit.anchorDay need limit.per.');
      }
      return totalCap(max, mode as LimitMode, `${max}${suffix}`);
    }
    const cached = this.cachedSpec(given.per, given.timeZone, given.anchorDay);
    const { spec, granularity } = cached;
    let period = cached.current;
    if (atMs < period.startMs || atMs >= period.endMs) {
      period = quotaPeriodOf(spec, atMs);
      if (atMs <= nowMs) cached.current = period;
    }
    const kept = this.retention[granularity];
    if (kept !== null && period.startMs < bucketStart(granularity, nowMs - kept)) {
      throw new ValidationError(
        `The quota period of at starts ${new Date(period.startMs).toISOString()}, before the ` +
          `oldest ${granularity} buckets kept (${formatDuration(kept)}: option retention, ` +
          'TALLY_RETENTION): its usage cannot be read whole.',
      );
    }
    return {
      max,
      mode: mode as LimitMode,
      spec,
      period,
      granularity,
      key: `${max}/${spec.per}/${spec.timeZone}/${spec.anchorDay}${suffix}`,
    };
  }

  private cachedSpec(per: unknown, timeZone: unknown, anchorDay: unknown): CachedSpec {
    // Only well-typed parts are looked up: a string '15' must not find the entry of 15.
    const cacheable =
      typeof per === 'string' &&
      (timeZone === undefined || typeof timeZone === 'string') &&
      (anchorDay === undefined || typeof anchorDay === 'number');
    const cacheKey = cacheable ? `${per}|${timeZone ?? ''}|${anchorDay ?? ''}` : undefined;
    const found = cacheKey === undefined ? undefined : this.specs.get(cacheKey);
    if (found !== undefined) return found;
    const spec = resolveQuotaPeriod(per, timeZone, anchorDay, 'limit');
    const sample = quotaPeriodOf(spec, Date.now());
    // The granularity depends on the zone's midnights only, not on the anchor: found once per
    // kind and zone, so requests inventing anchors (or spellings of a zone) cost one period
    // each, not a year of them.
    const sourceKey = `${spec.per}|${spec.timeZone}`;
    let granularity = this.sources.get(sourceKey);
    if (granularity === undefined) {
      granularity = this.sourceOf(spec, sample);
      remember(this.sources, sourceKey, granularity);
    }
    const resolved = { spec, granularity, current: sample };
    if (cacheKey !== undefined) remember(this.specs, cacheKey, resolved);
    return resolved;
  }

  /**
   * The kept granularity a period's usage is read from: its buckets must start on the
   * period's bounds, and it must be kept at least as long as the longest such period. The
   * bounds are checked on a period every four weeks for a year: a zone's offset may change
   * with the seasons (Lord Howe's by 30 minutes), and each offset lasts months.
   */
  private sourceOf(spec: QuotaPeriodSpec, sample: QuotaPeriod): Granularity {
    const bounds = [sample.startMs, sample.endMs];
    for (let week = 4; week <= 52; week += 4) {
      const { startMs, endMs } = quotaPeriodOf(spec, sample.startMs + week * 7 * 86_400_000);
      bounds.push(startMs, endMs);
    }
    const granularity = sourceGranularity(this.buckets, bounds);
    const where = `A quota per ${spec.per} in ${spec.timeZone}`;
    if (granularity === undefined) {
      throw new ValidationError(
        `${where} needs buckets that start on its bounds; the kept ones (` +
          `${this.buckets.join(', ') || 'none'}: option buckets, TALLY_BUCKETS) do not.`,
      );
    }
    const kept = this.retention[granularity];
    if (kept !== null && kept < longestPeriodMs[spec.per]) {
      throw new ValidationError(
        `${where} is read from ${granularity} buckets, kept only ${formatDuration(kept)} ` +
          '(option retention, TALLY_RETENTION): shorter than one period.',
      );
    }
    return granularity;
  }
}

/** Keeps a value in a bounded cache, which starts over once full. */
function remember<T>(cache: Map<string, T>, key: string, value: T): void {
  if (cache.size >= maxCachedSpecs) cache.clear();
  cache.set(key, value);
}

function totalCap(max: number, mode: LimitMode, key: string): PreparedLimit {
  return { max, mode, spec: undefined, period: undefined, granularity: undefined, key };
}

function safeMax(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
    throw new ValidationError(
      `${what} must be a whole number within ±(2^53−1), got ${String(value).slice(0, 40)}.`,
    );
  }
  return value;
}
