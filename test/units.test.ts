import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BucketSets } from '../src/bucket-sets.js';
import { bucketStart, bucketStarts, nextBucketStart } from '../src/buckets.js';
import { canonicalName, validateName } from '../src/counter-name.js';
import { shardOf } from '../src/sharding.js';
import { bucketField, parseBucketField } from '../src/shard-keys.js';

describe('shardOf', () => {
  it('is FNV-1a of the UTF-8 bytes, so every process routes a counter alike', () => {
    // Published FNV-1a 32-bit test vectors.
    expect(shardOf('a', 2 ** 32)).toBe(0xe40c292c);
    expect(shardOf('foobar', 2 ** 32)).toBe(0xbf9cf968);
    expect(shardOf('é', 16)).toBe(shardOf('é', 16));
  });

  it('spreads names over every shard', () => {
    const used = new Set(Array.from({ length: 2000 }, (_, i) => shardOf(`counter-${i}`, 16)));
    expect(used.size).toBe(16);
  });
});

describe('counter names', () => {
  it('accepts 1–256 bytes of UTF-8 without control characters', () => {
    expect(validateName('ü'.repeat(128))).toHaveLength(128); // 256 bytes
    expect(() => validateName('ü'.repeat(129))).toThrow(/1 to 256 bytes/);
    expect(() => validateName('')).toThrow(/1 to 256 bytes/);
    expect(() => validateName('a\u0000b')).toThrow(/control character/);
    expect(() => validateName('a\u0085b')).toThrow(/control character/);
    expect(() => validateName('\ud800')).toThrow(/lone surrogate/);
  });

  it('canonicalises labels whatever their order', () => {
    fc.assert(
      fc.property(
        fc.dictionary(fc.stringMatching(/^[a-z_][a-z0-9_]{0,8}$/), fc.string({ maxLength: 8 }), {
          maxKeys: 5,
        }),
        (labels) => {
          const reversed = Object.fromEntries(Object.entries(labels).reverse());
          expect(canonicalName({ name: 'n', labels })).toBe(
            canonicalName({ name: 'n', labels: reversed }),
          );
        },
      ),
    );
    expect(canonicalName({ name: 'api', labels: { b: 1, a: 'x"y' } })).toBe('api{a="x\\"y",b="1"}');
    expect(() => canonicalName({ name: 'api', labels: { 'bad key': 1 } })).toThrow(/Label key/);
  });
});

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

  it('fields round-trip', () => {
    expect(parseBucketField(bucketField('hour', 3_600_000, 'a{b="c"}'))).toEqual({
      granularity: 'hour',
      startMs: 3_600_000,
      counter: 'a{b="c"}',
    });
  });
});

describe('bucket sets', () => {
  it('give every instant the prefixes of its own buckets, whatever order they come in', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: Date.UTC(2020, 0, 1), max: Date.UTC(2030, 0, 1) }), {
          minLength: 1,
          maxLength: 50,
        }),
        (instants) => {
          const sets = new BucketSets(['hour', 'day', 'month']);
          for (const at of instants) {
            const set = sets.at(at);
            expect(set.prefixes.map((prefix) => prefix + 'c')).toEqual([
              bucketField('hour', bucketStart('hour', at), 'c'),
              bucketField('day', bucketStart('day', at), 'c'),
              bucketField('month', bucketStart('month', at), 'c'),
            ]);
            expect(set.id).toBe(set.prefixes.join(''));
          }
        },
      ),
    );
  });

  it('share one set within the smallest bucket, and an old instant does not evict it', () => {
    const sets = new BucketSets(['day', 'hour']);
    const hour = Date.UTC(2026, 10, 21, 23);
    const now = sets.at(hour + 1);
    expect(sets.at(hour + 3_599_999)).toBe(now);
    expect(sets.at(hour - 86_400_000)).not.toBe(now);
    expect(sets.at(hour + 5)).toBe(now);
    expect(sets.at(hour + 3_600_000).prefixes[0]).toBe(
      bucketField('day', Date.UTC(2026, 10, 22), ''),
    );
    expect(new BucketSets([]).at(hour)).toEqual({ id: '', prefixes: [] });
  });
});
