import { describe, expect, it } from 'vitest';
import {
  checkRetained,
  oldestRetainedMs,
  parseRetention,
  resolveRetention,
  retentionDefaults,
} from '../../src/counters/retention.js';
import { ValidationError } from '../../src/errors.js';

const day = 86_400_000;

describe('bucket retention settings', () => {
  it('default to minute 7 days, hour 90 days, day 3 years, month forever', () => {
    expect(resolveRetention(undefined, 'Option retention')).toEqual({
      minute: 7 * day,
      hour: 90 * day,
      day: 3 * 365 * day,
      month: null,
    });
    expect(parseRetention(undefined)).toEqual(retentionDefaults);
    expect(parseRetention('')).toEqual(retentionDefaults);
  });

  it('read durations, ms and forever, from the option and from TALLY_RETENTION', () => {
    expect(resolveRetention({ minute: '36h', day: null, month: '5y' }, 'Option retention')).toEqual(
      { minute: 36 * 3_600_000, hour: 90 * day, day: null, month: 5 * 365 * day },
    );
    expect(resolveRetention({ hour: 3 * day }, 'Option retention').hour).toBe(3 * day);
    expect(parseRetention(' minute=1d , month=forever,day=400d')).toEqual({
      minute: day,
      hour: 90 * day,
      day: 400 * day,
      month: null,
    });
  });

  it('refuse what is not a retention, naming the setting and the shortest allowed', () => {
    const refusals: [unknown, RegExp][] = [
      [{ minute: '7 days' }, /Option retention\.minute is "7 days"; write a duration/],
      [{ week: '7d' }, /Option retention has "week"; use minute, hour, day, month/],
      [{ month: '30d' }, /retention\.month is "30d".* from 62 days to 100 years/],
      [{ day: 86_400_000 }, /retention\.day is 86400000.* from 2 days/],
      [{ hour: '0h' }, /retention\.hour is "0h"/],
      [{ hour: 1.5e15 }, /retention\.hour/],
      [{ hour: true }, /retention\.hour must be a duration/],
      [['7d'], /Option retention must be an object/],
      ['7d', /Option retention must be an object/],
      [{ minute: 'x'.repeat(10_000) }, /is "x{39}…; write/],
    ];
    for (const [input, message] of refusals) {
      const call = () => resolveRetention(input as never, 'Option retention');
      expect(call, JSON.stringify(input).slice(0, 30)).toThrow(ValidationError);
      expect(call, JSON.stringify(input).slice(0, 30)).toThrow(message);
    }
    for (const raw of ['minute', 'minute=7d=8d', 'minute=7d,minute=8d', 'hour:90d']) {
      expect(() => parseRetention(raw), raw).toThrow(/TALLY_RETENTION must read like/);
    }
    expect(() => parseRetention('minute=7w')).toThrow(/TALLY_RETENTION\.minute is "7w"/);
    expect(() => parseRetention('__proto__=7d')).toThrow(/TALLY_RETENTION has "__proto__"/);
  });

  it('date the oldest increment by the shortest retention of the kept granularities only', () => {
    const now = Date.UTC(2026, 11, 1);
    expect(oldestRetainedMs(retentionDefaults, ['hour', 'day'], now)).toEqual({
      atMs: now - 90 * day,
      granularity: 'hour',
    });
    expect(oldestRetainedMs(retentionDefaults, ['minute', 'month'], now)).toEqual({
      atMs: now - 7 * day,
      granularity: 'minute',
    });
    expect(oldestRetainedMs(retentionDefaults, ['month'], now)).toBeUndefined();
    expect(oldestRetainedMs(retentionDefaults, [], now)).toBeUndefined();
  });
});

describe('reads past a retention', () => {
  const now = Date.UTC(2026, 11, 2, 12, 30);
  const retention = resolveRetention({ minute: '1d' }, 'Option retention');

  it('are refused from the first bucket that may be pruned, naming the retention', () => {
    // The minute holding now - 1 day is the oldest kept.
    const oldest = Date.UTC(2026, 11, 1, 12, 30);
    expect(() => {
      checkRetained(retention, 'minute', oldest, now);
    }).not.toThrow();
    expect(() => {
      checkRetained(retention, 'minute', oldest - 60_000, now);
    }).toThrow(
      /The read starts at 2026-12-01T12:29:00\.000Z, but minute buckets are kept 1 day \(option retention, TALLY_RETENTION\): none before 2026-12-01T12:30:00\.000Z/,
    );
    expect(() => {
      checkRetained(retention, 'minute', oldest - 60_000, now);
    }).toThrow(ValidationError);
    expect(() => {
      checkRetained(retention, 'hour', Date.UTC(2026, 8, 3, 12), now);
    }).not.toThrow();
    expect(() => {
      checkRetained(retention, 'hour', Date.UTC(2026, 8, 3, 11), now);
    }).toThrow(/hour buckets are kept 90 days/);
    expect(() => {
      checkRetained(retention, 'month', 0, now);
    }).not.toThrow();
  });
});
