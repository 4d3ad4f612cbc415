import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  compareCodePoints,
  encodeCursor,
  groupKey,
  parseInstant,
  resolveQuery,
  type UsageQueryInput,
} from '../../src/engine/query-spec.js';

const november = { counter: 'api_calls', from: '2026-11-01', to: '2026-12-01' } as const;
const kept = ['hour', 'day'] as const;
const resolve = (
  query: Partial<UsageQueryInput>,
  keep: readonly ('minute' | 'hour' | 'day' | 'month')[] = kept,
) =>
  resolveQuery(
    { ...november, granularity: 'day', ...query },
    // Fixed dates, whenever the tests run: every bucket kept forever.
    { buckets: keep, retention: { minute: null, hour: null, day: null, month: null } },
    'page',
  );

describe('usage query input', () => {
  it('reads dates on the query’s zone’s calendar, and instants with offsets as given', () => {
    expect(parseInstant('2026-11-01', 'from', 'Europe/Berlin')).toBe(
      Date.parse('2026-10-31T23:00:00Z'),
    );
    expect(parseInstant('2026-11-01T10:30', 'from', 'America/New_York')).toBe(
      Date.parse('2026-11-01T15:30:00Z'),
    );
    expect(parseInstant('2026-11-01T10:30:00.5Z', 'from', 'Asia/Kolkata')).toBe(
      Date.parse('2026-11-01T10:30:00.500Z'),
    );
    expect(parseInstant('2026-11-01T11:00+01:00', 'from', 'UTC')).toBe(
      Date.parse('2026-11-01T10:00:00Z'),
    );
    expect(parseInstant(Date.UTC(2026, 0, 1), 'from', 'UTC')).toBe(Date.UTC(2026, 0, 1));
    for (const bad of [
      '2026-02-29',
      '2026-13-01',
      '2026-11-01T24:00',
      'yesterday',
      '2026-11-01 10:00',
    ]) {
      expect(() => parseInstant(bad, 'from', 'UTC')).toThrow(/not an ISO 8601 date/);
    }
  });

  it('refuses what it cannot answer, saying what to change', () => {
    const cases: [Partial<UsageQueryInput>, RegExp][] = [
      [
        { granularity: 'week' as never },
        /granularity "week" is not one of minute, hour, day, month, total/,
      ],
      [{ from: '2026-12-01', to: '2026-11-01' }, /needs from < to/],
      [{ timeZone: 'Mars/Olympus' }, /not an IANA time zone name/],
      [{ groupBy: ['tenant id'] }, /groupBy has "tenant id" is not a label key/],
      [{ groupBy: ['tenant', 'tenant'] }, /lists a label twice/],
      [{ where: { tenant: [] } }, /where.tenant must list 1 to 1000 values/],
      [
        { where: { tenant: { $ne: 1 } as never } },
        /where.tenant must be a string, number or boolean/,
      ],
      [{ prefix: 'api:' }, /either counter .* or prefix/],
      [{ counter: 'api{x}' }, /has braces/],
      [{ granularity: 'hour', limit: 500 }, /A page of 500 groups × 720 windows is 360000 values/],
      [{ cursor: 'not-a-cursor' }, /cursor is not a nextCursor/],
      [
        { cursor: encodeCursor({ orderBy: 'value', fingerprint: 'x' }, { key: '', value: '1' }) },
        /cursor is from a query ordered by value, not by group/,
      ],
      [{ orderBy: 'name' as never }, /orderBy "name" is not group or value/],
      [{ limit: 0 }, /limit must be a whole number from 1 to 10000/],
    ];
    for (const [query, message] of cases) expect(() => resolve(query)).toThrow(message);
    // A zone whose days do not start on whole UTC hours needs minute buckets.
    expect(() => resolve({ timeZone: 'Asia/Kolkata' })).toThrow(
      /keep 'minute' buckets \(option buckets, TALLY_BUCKETS\)/,
    );
    expect(resolve({ timeZone: 'Asia/Kolkata' }, ['minute', 'hour']).source).toBe('minute');
    // Month windows are summed from day buckets: the query's granularity need not be kept.
    expect(resolve({ granularity: 'month' }).source).toBe('day');
    expect(() => resolve({ granularity: 'total', from: '2026-11-01T10:30:00Z' })).toThrow(
      /move from and to onto bucket boundaries/,
    );
    // The default page fits any period: 1440 minute windows → 69 groups.
    expect(
      resolve({ granularity: 'minute', from: '2026-11-01', to: '2026-11-02' }, ['minute']).limit,
    ).toBe(69);
  });

  it('orders group keys as PostgreSQL’s COLLATE "C" does: by code point, absent labels first', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), fc.string({ unit: 'binary' }), (a, b) => {
        fc.pre(a.isWellFormed() && b.isWellFormed());
        expect(Math.sign(compareCodePoints(a, b))).toBe(
          Math.sign(Buffer.compare(Buffer.from(a), Buffer.from(b))),
        );
      }),
    );
    const values = fc.array(fc.option(fc.string({ unit: 'grapheme' }), { nil: undefined }), {
      minLength: 2,
      maxLength: 2,
    });
    fc.assert(
      fc.property(values, values, (a, b) => {
        const rank = (x: string | undefined, y: string | undefined) =>
          x === y ? 0 : x === undefined ? -1 : y === undefined ? 1 : compareCodePoints(x, y);
        const expected = rank(a[0], b[0]) || rank(a[1], b[1]);
        expect(Math.sign(compareCodePoints(groupKey(a), groupKey(b)))).toBe(Math.sign(expected));
      }),
    );
  });
});

describe('values that reach the store', () => {
  it('refuses where values and cursors no counter can match, before any query', () => {
    expect(() => resolve({ where: { tenant: 'a\u0000b' } })).toThrow(/a value no counter can have/);
    expect(() => resolve({ where: { tenant: 'x'.repeat(257) } })).toThrow(
      /a value no counter can have/,
    );
    const withNul = Buffer.from(JSON.stringify({ o: 'group', key: '\u0002a\u0000' })).toString(
      'base64url',
    );
    expect(() => resolve({ cursor: withNul })).toThrow(/cursor is not a nextCursor/);
  });
});

describe('instants and zones as other systems write them', () => {
  it('takes microseconds and offsets without a colon, and refuses offsets past 18:00 or :59', () => {
    expect(parseInstant('2026-11-01T10:00:00.123456Z', 'from', 'UTC')).toBe(
      Date.parse('2026-11-01T10:00:00.123Z'),
    );
    expect(parseInstant('2026-11-01T11:00:00+0100', 'from', 'UTC')).toBe(
      Date.parse('2026-11-01T10:00:00Z'),
    );
    for (const bad of ['2026-11-01T10:00+05:99', '2026-11-01T10:00+19:00']) {
      expect(() => parseInstant(bad, 'from', 'UTC')).toThrow(/not an ISO 8601/);
    }
    // A cursor belongs to its query: not to another counter, period or order.
    const cursor = encodeCursor(resolve({}), { key: '\u0002acme' });
    expect(resolve({ cursor }).after).toEqual({ key: '\u0002acme' });
    expect(resolve({ cursor, limit: 5 }).after).toEqual({ key: '\u0002acme' });
    for (const other of [
      { counter: 'other' },
      { to: '2026-11-30' },
      { order: 'desc' as const },
      { groupBy: ['region'] },
    ]) {
      expect(() => resolve({ ...other, cursor })).toThrow(/cursor is from another query/);
    }
    // Any spelling of a zone is its canonical name.
    expect(resolve({ timeZone: 'europe/BERLIN' }).timeZone).toBe('Europe/Berlin');
  });
});
