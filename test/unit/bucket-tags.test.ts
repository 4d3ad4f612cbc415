import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { someGranularities, anInstant, aCounter } from '../support/arbitraries.js';
import {
  BucketTags,
  bucketTag,
  parsePendingField,
  tagBuckets,
} from '../../src/redis/bucket-tags.js';
import { bucketStart } from '../../src/counters/buckets.js';

describe('bucket tags', () => {
  it('name the bucket of every granularity, and a field splits back into tag and counter', () => {
    fc.assert(
      fc.property(someGranularities, anInstant, aCounter, (configured, at, counter) => {
        const tag = bucketTag(configured, at);
        expect(parsePendingField(tag + counter)).toEqual({ tag, counter });
        expect(tagBuckets(tag)).toEqual({
          granularities: configured,
          starts: configured.map((granularity) => bucketStart(granularity, at)),
        });
      }),
    );
    expect(bucketTag([], 0)).toBe('');
    expect(parsePendingField('plain')).toEqual({ tag: '', counter: 'plain' });
    expect(tagBuckets('')).toEqual({ granularities: [], starts: [] });
  });

  it('refuse a tag Tally did not write', () => {
    expect(() => tagBuckets('week\u001f0\u001f')).toThrow(/Not a bucket tag/);
    expect(() => tagBuckets('hour\u001fsoon\u001f')).toThrow(/Not a bucket tag/);
  });

  it('are handed out per instant, whatever order the instants come in', () => {
    fc.assert(
      fc.property(someGranularities, fc.array(anInstant, { minLength: 1 }), (configured, at) => {
        const tags = new BucketTags(configured);
        at.forEach((instant, i) => {
          const tag = i % 2 === 0 ? tags.now(instant) : tags.at(instant);
          expect(tag).toBe(bucketTag(configured, instant));
        });
      }),
    );
  });

  it('stay the same within the smallest bucket, and an explicit instant does not displace it', () => {
    const tags = new BucketTags(['day', 'hour']);
    const hour = Date.UTC(2026, 10, 21, 23);
    const now = tags.now(hour + 1);
    expect(tags.now(hour + 3_599_999)).toBe(now);
    expect(tags.at(hour - 86_400_000)).not.toBe(now);
    expect(tags.at(Date.UTC(9999, 0, 1))).not.toBe(now);
    expect(tags.now(hour + 5)).toBe(now);
    expect(tagBuckets(tags.now(hour + 3_600_000)).starts).toEqual([
      Date.UTC(2026, 10, 22),
      Date.UTC(2026, 10, 22),
    ]);
    expect(new BucketTags([]).at(hour)).toBe('');
  });
});
