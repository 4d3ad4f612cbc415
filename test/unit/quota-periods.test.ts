import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../src/errors.js';
import {
  quotaPeriodOf,
  resolveQuotaPeriod,
  type QuotaPeriodSpec,
} from '../../src/counters/quota-periods.js';

const iso = (ms: number) => new Date(ms).toISOString();

/** The zone's wall clock at an instant, read with Intl independently of the module. */
function wallParts(zone: string, atMs: number): { day: number; hour: number; minute: number } {
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat('en-US', {
      timeZone: zone,
      hourCycle: 'h23',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
    })
      .formatToParts(atMs)
      .map((part) => [part.type, Number(part.value)]),
  ) as Record<string, number>;
  return { day: parts.day ?? 0, hour: parts.hour ?? 0, minute: parts.minute ?? 0 };
}

/** Days in the zone's month holding `atMs`. */
function daysInZoneMonth(zone: string, atMs: number): number {
  const [year, month] = new Intl.DateTimeFormat('en-CA', {
    timeZone: zone,
    year: 'numeric',
    month: 'numeric',
  })
    .format(atMs)
    .split('-')
    .map(Number) as [number, number];
  return new Date(Date.UTC(year, month, 0)).getUTCDate();
}

describe('quota periods', () => {
  it('resets monthly on the anchor day at the zone’s midnight, the last day when it is shorter', () => {
    const berlin15: QuotaPeriodSpec = { per: 'month', timeZone: 'Europe/Berlin', anchorDay: 15 };
    const period = quotaPeriodOf(berlin15, Date.parse('2026-03-20T12:00:00Z'));
    // 15 March is still winter time (UTC+1), 15 April summer time (UTC+2).
    expect([iso(period.startMs), iso(period.endMs)]).toEqual([
      '2026-03-14T23:00:00.000Z',
      '2026-04-14T22:00:00.000Z',
    ]);
    // One millisecond before the zone's midnight is still the old period.
    expect(iso(quotaPeriodOf(berlin15, Date.parse('2026-03-14T22:59:59.999Z')).startMs)).toBe(
      '2026-02-14T23:00:00.000Z',
    );

    const utc31: QuotaPeriodSpec = { per: 'month', timeZone: 'UTC', anchorDay: 31 };
    const february = quotaPeriodOf(utc31, Date.parse('2028-03-01T00:00:00Z'));
    expect([iso(february.startMs), iso(february.endMs)]).toEqual([
      '2028-02-29T00:00:00.000Z',
      '2028-03-31T00:00:00.000Z',
    ]);
  });

  it('follows the zone for days, and keeps a 23-hour day on the spring change', () => {
    const day = quotaPeriodOf(
      { per: 'day', timeZone: 'America/New_York', anchorDay: 1 },
      Date.parse('2026-03-08T12:00:00Z'),
    );
    expect([iso(day.startMs), iso(day.endMs)]).toEqual([
      '2026-03-08T05:00:00.000Z',
      '2026-03-09T04:00:00.000Z',
    ]);
  });

  it('refuses a bad per, zone or anchor with a ValidationError naming the setting', () => {
    expect(() => resolveQuotaPeriod('week', undefined, undefined, 'limit')).toThrow(
      /limit\.per must be one of minute, hour, day, month/,
    );
    expect(() => resolveQuotaPeriod('month', 'Mars/Olympus', undefined, 'limit')).toThrow(
      ValidationError,
    );
    expect(() => resolveQuotaPeriod('day', undefined, 3, 'limit')).toThrow(/anchorDay/);
    for (const anchor of [0, 32, 1.5, '3']) {
      expect(() => resolveQuotaPeriod('month', 'UTC', anchor, 'limit')).toThrow(/anchorDay/);
    }
    expect(resolveQuotaPeriod('month', 'europe/berlin', 31, 'limit')).toEqual({
      per: 'month',
      timeZone: 'Europe/Berlin',
      anchorDay: 31,
    });
  });

  // Zones with no clock change at midnight, so every period starts at 00:00 on the wall clock.
  const zones = ['UTC', 'Europe/Berlin', 'America/New_York', 'Asia/Kolkata', 'Australia/Lord_Howe'];

  it('has hours of 30 and 90 minutes where Lord Howe moves its clock by half an hour', () => {
    const hourly = resolveQuotaPeriod('hour', 'Australia/Lord_Howe', undefined, 'limit');
    // 2047-10-06 02:00 (UTC+10:30) jumps to 02:30 (UTC+11): the hour 02:00–03:00 is 30 minutes.
    const jump = Date.UTC(2047, 9, 5, 15, 30);
    expect(quotaPeriodOf(hourly, jump - 1)).toEqual({ startMs: jump - 3_600_000, endMs: jump });
    expect(quotaPeriodOf(hourly, jump)).toEqual({ startMs: jump, endMs: jump + 1_800_000 });
    // 2047-04-07 02:00 (UTC+11) goes back to 01:30 (UTC+10:30): 01:00–02:00 is 90 minutes.
    const back = Date.UTC(2047, 3, 6, 15);
    expect(quotaPeriodOf(hourly, back)).toEqual({
      startMs: back - 3_600_000,
      endMs: back + 1_800_000,
    });
  });

  it('keeps the minutes of the half hour Lord Howe repeats (its clock goes back 02:00 to 01:30)', () => {
    const minutely = resolveQuotaPeriod('minute', 'Australia/Lord_Howe', undefined, 'limit');
    // 2035-04-01 01:30 (UTC+10:30), the second time: 15:00 UTC (found by the model below).
    const repeated = Date.UTC(2035, 2, 31, 15);
    expect(quotaPeriodOf(minutely, repeated)).toEqual({
      startMs: repeated,
      endMs: repeated + 60_000,
    });
  });

  it('model: periods hold their instant, tile the time line, and start where the calendar says', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...zones),
        fc.constantFrom('minute', 'hour', 'day', 'month' as const),
        fc.integer({ min: 1, max: 31 }),
        fc.integer({ min: Date.parse('1990-01-01'), max: Date.parse('2060-01-01') }),
        (timeZone, per, anchor, atMs) => {
          const spec = resolveQuotaPeriod(
            per,
            timeZone,
            per === 'month' ? anchor : undefined,
            'limit',
          );
          const { startMs, endMs } = quotaPeriodOf(spec, atMs);
          expect(startMs).toBeLessThanOrEqual(atMs);
          expect(endMs).toBeGreaterThan(atMs);
          // Neighbours meet exactly: no instant belongs to two periods or to none.
          expect(quotaPeriodOf(spec, endMs).startMs).toBe(endMs);
          expect(quotaPeriodOf(spec, startMs - 1).endMs).toBe(startMs);
          const wall = wallParts(timeZone, startMs);
          if (per === 'minute') expect(startMs % 60_000).toBe(0);
          if (per === 'hour') {
            // The wall clock enters a new hour at the start and keeps it to the end, also
            // where it jumps (it may then enter at :30, past a gap) or repeats half an hour.
            const hourOf = (ms: number) => {
              const { day, hour } = wallParts(timeZone, ms);
              return day * 24 + hour;
            };
            expect(hourOf(startMs - 1)).not.toBe(hourOf(startMs));
            expect(hourOf(endMs - 1)).toBe(hourOf(startMs));
          }
          if (per === 'day' || per === 'month') expect(wall.minute).toBe(0);
          if (per === 'day' || per === 'month') expect(wall.hour).toBe(0);
          if (per === 'month') {
            expect(wall.day).toBe(Math.min(anchor, daysInZoneMonth(timeZone, startMs)));
          }
        },
      ),
      { numRuns: 2_000 },
    );
  });
});
