import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  bucketCount,
  bucketStart,
  bucketStarts,
  earliestInstantMs,
  latestInstantMs,
  nextBucketStart,
} from '../../src/counters/buckets.js';

describe('buckets', () => {
  it('start at UTC boundaries', () => {
    const at = Date.UTC(2026, 1, 28, 23, 59, 30, 5);
    expect(new Date(bucketStart('minute', at)).toISOString()).toBe('2026-02-28T23:59:00.000Z');
    expect(new Date(bucketStart('hour', at)).toISOString()).toBe('2026-02-28T23:00:00.000Z');
    expect(new Date(bucketStart('day', at)).toISOString()).toBe('2026-02-28T00:00:00.000Z');
    expect(new Date(bucketStart('month', at)).toISOString()).toBe('2026-02-01T00:00:00.000Z');
    expect(new Date(nextBucketStart('month', Date.UTC(2026, 11, 1))).toISOString()).toBe(
      '2027-01-01T00:00:00.000Z',
    );
  });

  it('start where the calendar says, in every accepted year (0000–9999)', () => {
    // The oracle: the instant with its smaller fields zeroed by Date's own UTC setters.
    const truncated = (at: number, granularity: 'day' | 'month') => {
      const date = new Date(at);
      if (granularity === 'month') date.setUTCDate(1);
      date.setUTCHours(0, 0, 0, 0);
      return date.getTime();
    };
    fc.assert(
      fc.property(
        fc.integer({ min: earliestInstantMs, max: latestInstantMs }),
        fc.constantFrom('day', 'month' as const),
        (at, granularity) => {
          expect(bucketStart(granularity, at)).toBe(truncated(at, granularity));
          const next = nextBucketStart(granularity, bucketStart(granularity, at));
          expect(next).toBeGreaterThan(at);
          expect(bucketStart(granularity, next - 1)).toBe(bucketStart(granularity, at));
        },
      ),
      { numRuns: 2_000 },
    );
    // Date.UTC maps two-digit years to 1900–1999: 0001-01-01 once landed in 1901.
    const yearOne = new Date('0001-03-04T05:06:07Z').getTime();
    expect(new Date(bucketStart('day', yearOne)).toISOString()).toBe('0001-03-04T00:00:00.000Z');
    expect(new Date(bucketStart('month', yearOne)).toISOString()).toBe('0001-03-01T00:00:00.000Z');
    expect(new Date(nextBucketStart('month', bucketStart('month', yearOne))).toISOString()).toBe(
      '0001-04-01T00:00:00.000Z',
    );
  });

  it('are counted without being listed, exactly', () => {
    fc.assert(
      fc.property(
        fc.constantFrom('minute', 'hour', 'day', 'month' as const),
        fc.integer({ min: earliestInstantMs, max: latestInstantMs - 4e9 }),
        fc.integer({ min: -1e6, max: 4e9 }),
        (granularity, from, length) => {
          expect(bucketCount(granularity, from, from + length)).toBe(
            bucketStarts(granularity, from, from + length).length,
          );
        },
      ),
      { numRuns: 500 },
    );
    // 0000–9999 in hours, counted at once: 10,000 years of 365 days and 2,425 leap days
    // (every 4th year, but not every 100th unless every 400th).
    expect(bucketCount('hour', earliestInstantMs, latestInstantMs)).toBe((3_650_000 + 2_425) * 24);
    expect(bucketCount('month', earliestInstantMs, latestInstantMs)).toBe(120_000);
  });

  it('cover a period without gaps or overlaps', () => {
    fc.assert(
      fc.property(
        fc.constantFrom('minute', 'hour', 'day', 'month' as const),
        fc.integer({ min: 0, max: 4e12 }),
        fc.integer({ min: 1, max: 1e9 }),
        (granularity, from, length) => {
          const starts = bucketStarts(granularity, from, from + length);
          expect(starts[0]).toBe(bucketStart(granularity, from));
          for (let i = 1; i < starts.length; i++) {
            expect(starts[i]).toBe(nextBucketStart(granularity, starts[i - 1] as number));
          }
          expect(starts.at(-1)).toBeLessThan(from + length);
        },
      ),
      { numRuns: 200 },
    );
  });
});
