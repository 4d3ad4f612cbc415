import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  sourceGranularity,
  validateTimeZone,
  windowBoundaries,
} from '../../src/counters/time-zones.js';

const iso = (ms: number[]) => ms.map((m) => new Date(m).toISOString());
const hours = (boundaries: number[]) =>
  boundaries.slice(1).map((end, i) => (end - (boundaries[i] ?? 0)) / 3_600_000);

describe('calendar windows in a time zone', () => {
  it('gives DST days their 23 and 25 hours (Berlin, New York)', () => {
    const berlinSpring = windowBoundaries(
      'Europe/Berlin',
      'day',
      Date.parse('2026-03-28T23:00:00Z'),
      Date.parse('2026-03-30T22:00:00Z'),
      10,
    );
    expect(iso(berlinSpring)).toEqual([
      '2026-03-28T23:00:00.000Z',
      '2026-03-29T22:00:00.000Z',
      '2026-03-30T22:00:00.000Z',
    ]);
    expect(hours(berlinSpring)).toEqual([23, 24]);
    const berlinAutumn = windowBoundaries(
      'Europe/Berlin',
      'day',
      Date.parse('2026-10-25T12:00:00Z'),
      Date.parse('2026-10-25T13:00:00Z'),
      10,
    );
    expect(iso(berlinAutumn)).toEqual(['2026-10-24T22:00:00.000Z', '2026-10-25T23:00:00.000Z']);
    const newYork = (day: string) =>
      hours(
        windowBoundaries(
          'America/New_York',
          'day',
          Date.parse(`${day}T12:00:00Z`),
          Date.parse(`${day}T13:00:00Z`),
          10,
        ),
      );
    expect([newYork('2026-03-08'), newYork('2026-11-01'), newYork('2026-11-02')]).toEqual([
      [23],
      [25],
      [24],
    ]);
    // New York's repeated 01:00 is two hours, one of each offset.
    expect(
      iso(
        windowBoundaries(
          'America/New_York',
          'hour',
          Date.parse('2026-11-01T05:10:00Z'),
          Date.parse('2026-11-01T06:10:00Z'),
          10,
        ),
      ),
    ).toEqual(['2026-11-01T05:00:00.000Z', '2026-11-01T06:00:00.000Z', '2026-11-01T07:00:00.000Z']);
  });

  it('ends months on the zone’s calendar, leap day included', () => {
    expect(
      iso(
        windowBoundaries(
          'Europe/Berlin',
          'month',
          Date.parse('2026-11-15T00:00:00Z'),
          Date.parse('2026-11-16T00:00:00Z'),
          10,
        ),
      ),
    ).toEqual(['2026-10-31T23:00:00.000Z', '2026-11-30T23:00:00.000Z']);
    expect(
      iso(
        windowBoundaries(
          'Asia/Kolkata',
          'month',
          Date.parse('2026-11-30T18:30:00Z'),
          Date.parse('2026-12-01T00:00:00Z'),
          10,
        ),
      ),
    ).toEqual(['2026-11-30T18:30:00.000Z', '2026-12-31T18:30:00.000Z']);
    const february = windowBoundaries(
      'UTC',
      'day',
      Date.parse('2024-02-28T00:00:00Z'),
      Date.parse('2024-03-01T00:00:01Z'),
      10,
    );
    expect(iso(february)).toEqual([
      '2024-02-28T00:00:00.000Z',
      '2024-02-29T00:00:00.000Z',
      '2024-03-01T00:00:00.000Z',
      '2024-03-02T00:00:00.000Z',
    ]);
  });

  it('starts a day whose midnight is skipped at the end of the gap (Santiago)', () => {
    // Chile moves 00:00 → 01:00 on 2026-09-06: that day starts at 01:00 −03 = 04:00Z.
    const days = windowBoundaries(
      'America/Santiago',
      'day',
      Date.parse('2026-09-06T12:00:00Z'),
      Date.parse('2026-09-06T13:00:00Z'),
      10,
    );
    expect(iso(days)).toEqual(['2026-09-06T04:00:00.000Z', '2026-09-07T03:00:00.000Z']);
  });

  it('refuses hours where a zone moves its clock by half an hour, and too many windows', () => {
    expect(() =>
      windowBoundaries(
        'Australia/Lord_Howe',
        'hour',
        Date.parse('2026-10-03T14:00:00Z'),
        Date.parse('2026-10-03T17:00:00Z'),
        10,
      ),
    ).toThrow(/Lord_Howe moves its clocks by part of an hour/);
    expect(() =>
      windowBoundaries(
        'UTC',
        'minute',
        Date.parse('2026-10-03T00:00:00Z'),
        Date.parse('2026-10-04T00:00:00Z'),
        1_000,
      ),
    ).toThrow(/more than 1000 minute windows/);
  });

  it('starts every day window at the zone’s midnight, and holds from', () => {
    const zones = [
      'UTC',
      'Europe/Berlin',
      'America/New_York',
      'Asia/Kolkata',
      'Asia/Kathmandu',
      'Australia/Sydney',
    ];
    fc.assert(
      fc.property(
        fc.constantFrom(...zones),
        fc.integer({
          min: Date.parse('1990-01-01T00:00:00Z'),
          max: Date.parse('2040-01-01T00:00:00Z'),
        }),
        fc.integer({ min: 1, max: 90 * 86_400_000 }),
        (zone, from, length) => {
          const boundaries = windowBoundaries(zone, 'day', from, from + length, 200);
          const clock = new Intl.DateTimeFormat('en-GB', {
            timeZone: zone,
            hourCycle: 'h23',
            hour: '2-digit',
            minute: '2-digit',
            second: '2-digit',
          });
          for (const boundary of boundaries) expect(clock.format(boundary)).toBe('00:00:00');
          expect(boundaries[0]).toBeLessThanOrEqual(from);
          expect(boundaries[1]).toBeGreaterThan(from);
          expect(boundaries.at(-2)).toBeLessThan(from + length);
          expect(boundaries.at(-1)).toBeGreaterThanOrEqual(from + length);
          for (const hoursLong of hours(boundaries))
            expect([23, 23.5, 24, 24.5, 25]).toContain(hoursLong);
        },
      ),
    );
  });

  it('sums from the coarsest kept buckets that start on every boundary', () => {
    const berlinNovember = windowBoundaries(
      'Europe/Berlin',
      'day',
      Date.parse('2026-11-01T00:00:00Z'),
      Date.parse('2026-11-03T00:00:00Z'),
      10,
    );
    expect(sourceGranularity(['hour', 'day'], berlinNovember)).toBe('hour');
    expect(
      sourceGranularity(
        ['minute', 'hour', 'day', 'month'],
        [Date.parse('2026-11-01T00:00:00Z'), Date.parse('2026-12-01T00:00:00Z')],
      ),
    ).toBe('month');
    expect(
      sourceGranularity(['hour', 'day'], [Date.parse('2026-11-01T18:30:00Z')]),
    ).toBeUndefined();
  });

  it('knows IANA names and refuses anything else', () => {
    expect(validateTimeZone('Europe/Berlin')).toBe('Europe/Berlin');
    for (const bad of ['Mars/Olympus', '', 'x'.repeat(65), 42, null]) {
      expect(() => validateTimeZone(bad)).toThrow(/IANA time zone/);
    }
  });
});
