import { ValidationError } from '../errors.js';
import { utcDate } from './buckets.js';
import {
  instantOfWallClock,
  validateTimeZone,
  wallClockMs,
  windowBoundaries,
} from './time-zones.js';

/*
 * The periods a quota resets on: a minute, hour, day or month of a time zone's calendar, a
 * month starting on an anchor day (OpenMeter's usagePeriod anchor, Unkey's refillDay). An
 * anchor past a month's last day means its last day: anchored on the 31st, February's period
 * starts on the 28th (29th), and March's on the 31st again.
 */

export const quotaPers = ['minute', 'hour', 'day', 'month'] as const;
export type QuotaPer = (typeof quotaPers)[number];

export interface QuotaPeriodSpec {
  per: QuotaPer;
  /** IANA zone whose calendar the period follows (canonical name). */
  timeZone: string;
  /** The day of the month a monthly period starts on, 1–31; 1 for other periods. */
  anchorDay: number;
}

/** One period: [startMs, endMs). */
export interface QuotaPeriod {
  startMs: number;
  endMs: number;
}

/** Checks a period's parts as a caller gave them; `where` names them in errors. */
export function resolveQuotaPeriod(
  per: unknown,
  timeZone: unknown,
  anchorDay: unknown,
  where: string,
): QuotaPeriodSpec {
  if (!(quotaPers as readonly unknown[]).includes(per)) {
    throw new ValidationError(
      `${where}.per must be one of ${quotaPers.join(', ')}, got ${String(per).slice(0, 40)}.`,
    );
  }
  const zone = timeZone === undefined ? 'UTC' : validateTimeZone(timeZone);
  if (anchorDay !== undefined) {
    if (per !== 'month') {
      throw new ValidationError(`${where}.anchorDay is for monthly periods (per: 'month').`);
    }
    if (
      typeof anchorDay !== 'number' ||
      !Number.isInteger(anchorDay) ||
      anchorDay < 1 ||
      anchorDay > 31
    ) {
      throw new ValidationError(`${where}.anchorDay must be a whole number from 1 to 31.`);
    }
  }
  return { per: per as QuotaPer, timeZone: zone, anchorDay: anchorDay ?? 1 };
}

/** Days in a month of the proleptic Gregorian calendar (month 0–11, may overflow). */
function daysIn(year: number, month: number): number {
  return new Date(utcDate(year, month + 1, 0)).getUTCDate();
}

/** Midnight of the anchor day of a month (month may be out of 0–11), wall clock as UTC ms. */
function anchorWall(year: number, month: number, anchorDay: number): number {
  const first = new Date(utcDate(year, month, 1));
  const y = first.getUTCFullYear();
  const m = first.getUTCMonth();
  return utcDate(y, m, Math.min(anchorDay, daysIn(y, m)));
}

/** The period holding `atMs`. */
export function quotaPeriodOf(spec: QuotaPeriodSpec, atMs: number): QuotaPeriod {
  if (spec.per === 'minute') {
    // Every zone's offset has been whole minutes since 1972, so its minutes are UTC's. (From the
    // wall clock, a minute of the half hour Lord Howe repeats mapped to its first occurrence,
    // half an hour earlier: a period that did not hold its instant.)
    const startMs = Math.floor(atMs / 60_000) * 60_000;
    return { startMs, endMs: startMs + 60_000 };
  }
  if (spec.per === 'hour') {
    // The wall clock's hour, wherever the clock's changes put its ends: around a
    // change by part of an hour (Lord Howe's 30 minutes) an hour lasts 30 or 90 minutes, as a
    // day of a whole-hour change lasts 23 or 25 hours. (Windows of usage queries refuse such
    // hours instead: a bucket there would not be whole.)
    const size = 3_600_000;
    const startWall = Math.floor(wallClockMs(spec.timeZone, atMs) / size) * size;
    return {
      startMs: instantOfWallClock(spec.timeZone, startWall),
      endMs: instantOfWallClock(spec.timeZone, startWall + size),
    };
  }
  if (spec.per === 'day') {
    const [startMs = atMs, endMs = atMs] = windowBoundaries(
      spec.timeZone,
      spec.per,
      atMs,
      atMs + 1,
      2,
    );
    return { startMs, endMs };
  }
  // The month whose anchor came last, on the zone's wall clock.
  const wall = new Date(wallClockMs(spec.timeZone, atMs));
  const year = wall.getUTCFullYear();
  const month = wall.getUTCMonth();
  const thisAnchor = anchorWall(year, month, spec.anchorDay);
  const startWall =
    wall.getTime() >= thisAnchor ? thisAnchor : anchorWall(year, month - 1, spec.anchorDay);
  const start = new Date(startWall);
  const endWall = anchorWall(start.getUTCFullYear(), start.getUTCMonth() + 1, spec.anchorDay);
  return {
    startMs: instantOfWallClock(spec.timeZone, startWall),
    endMs: instantOfWallClock(spec.timeZone, endWall),
  };
}
