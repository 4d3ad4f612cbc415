import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { anInstant } from '../support/arbitraries.js';
import { batchRows } from '../../src/engine/batch-rows.js';
import { bucketTag, parsePendingField, tagBuckets } from '../../src/redis/bucket-tags.js';

describe('batchRows', () => {
  /** The plain definition: every field's delta added to its counter and each of its buckets. */
  function expected(deltas: Record<string, string>) {
    const totals = new Map<string, bigint>();
    const buckets = new Map<string, bigint>();
    for (const [field, delta] of Object.entries(deltas)) {
      const { tag, counter } = parsePendingField(field);
      totals.set(counter, (totals.get(counter) ?? 0n) + BigInt(delta));
      const { granularities: names, starts } = tagBuckets(tag);
      names.forEach((granularity, i) => {
        const key = JSON.stringify([counter, granularity, starts[i]]);
        buckets.set(key, (buckets.get(key) ?? 0n) + BigInt(delta));
      });
    }
    return { totals, buckets };
  }

  it('sum every delta exactly into its total and into each of its buckets, once per row', () => {
    const aDelta = fc.oneof(
      fc.integer({ min: -1000, max: 1000 }),
      fc.bigInt({ min: -(2n ** 62n), max: 2n ** 62n }),
    );
    const aField = fc.tuple(
      fc.constantFrom(['hour', 'day'] as const, ['minute'] as const, [] as const),
      anInstant,
      fc.constantFrom('a', 'b', 'c{x="1"}'),
    );
    fc.assert(
      fc.property(fc.array(fc.tuple(aField, aDelta), { maxLength: 30 }), (entries) => {
        const deltas: Record<string, string> = {};
        for (const [[configured, at, counter], delta] of entries) {
          deltas[bucketTag(configured, at) + counter] = String(delta);
        }
        const rows = batchRows(Object.entries(deltas).flat());
        const want = expected(deltas);
        expect(new Set(rows.counters.names).size).toBe(rows.counters.names.length);
        expect(
          new Map(
            rows.counters.names.map((name, i) => [name, BigInt(rows.counters.deltas[i] ?? '')]),
          ),
        ).toEqual(want.totals);
        const {
          names,
          granularities: bucketGranularities,
          startsMs,
          deltas: bucketDeltas,
        } = rows.buckets;
        const keys = names.map((name, i) =>
          JSON.stringify([name, bucketGranularities[i], startsMs[i]]),
        );
        expect(new Set(keys).size).toBe(keys.length);
        expect(new Map(keys.map((key, i) => [key, BigInt(bucketDeltas[i] ?? '')]))).toEqual(
          want.buckets,
        );
      }),
    );
  });

  it('sum two inexact-as-double deltas exactly even when the sum looks safe', () => {
    // Found by the property above: as doubles these two added up to a wrong safe integer.
    const at = Date.UTC(2020, 0, 1);
    const rows = batchRows([
      `${bucketTag(['hour', 'day'], at)}b`,
      '-2577475328754530561',
      `${bucketTag(['hour', 'day'], at + 3_600_000)}b`,
      '2586482528009271042',
    ]);
    expect(rows.counters.deltas).toEqual(['9007199254740481']);
    // The day bucket (both hours), then each hour.
    expect(rows.buckets.granularities).toEqual(['day', 'hour', 'hour']);
    expect(rows.buckets.deltas).toEqual([
      '9007199254740481',
      '-2577475328754530561',
      '2586482528009271042',
    ]);
  });

  it('give the rows of one period in counter order', () => {
    const tag = bucketTag(['hour', 'day'], Date.UTC(2026, 10, 21, 10));
    const rows = batchRows([`${tag}b`, '2', `${tag}c`, '3', `${tag}a`, '1']);
    expect(rows.counters).toEqual({ names: ['a', 'b', 'c'], deltas: ['1', '2', '3'] });
    expect(rows.buckets.names).toEqual(['a', 'a', 'b', 'b', 'c', 'c']);
  });
});
