import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { batchRows } from '../src/engine/batch-rows.js';
import { BucketTags, bucketTag, parsePendingField, tagBuckets } from '../src/redis/bucket-tags.js';
import {
  bucketCount,
  bucketStart,
  bucketStarts,
  earliestInstantMs,
  granularities,
  latestInstantMs,
  nextBucketStart,
} from '../src/counters/buckets.js';
import { canonicalName, validateName } from '../src/counters/counter-name.js';
import { forEachLimited, sharedFor, SerialQueue } from '../src/engine/concurrency.js';
import { createLogger, redactSecrets } from '../src/process/logging.js';
import { shardOf } from '../src/counters/sharding.js';

describe('shardOf', () => {
  it('is FNV-1a of the UTF-8 bytes, so every process routes a counter alike', () => {
    // Published FNV-1a 32-bit test vectors.
    expect(shardOf('a', 2 ** 32)).toBe(0xe40c292c);
    expect(shardOf('foobar', 2 ** 32)).toBe(0xbf9cf968);
  });

  it('hashes the bytes Buffer.from encodes, for any string', () => {
    const reference = (name: string) => {
      let hash = 0x811c9dc5;
      for (const byte of Buffer.from(name, 'utf8')) hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
      return hash;
    };
    // Every UTF-16 unit, lone surrogates included, and names of whole code points.
    const names = fc.oneof(fc.string({ unit: 'binary' }), fc.string({ unit: 'grapheme' }));
    fc.assert(
      fc.property(names, (name) => shardOf(name, 2 ** 32) === reference(name)),
      { numRuns: 5_000 },
    );
    // The edges of each UTF-8 length, surrogate pairs and lone surrogates of either half.
    for (const name of [
      '\u007f\u0080',
      '\u07ff\u0800',
      '\uffff\u{10000}',
      '\u{10ffff}',
      'a\ud800',
      '\udc00a',
      '\udbff\udfff',
    ]) {
      expect(shardOf(name, 2 ** 32), JSON.stringify(name)).toBe(reference(name));
    }
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
    expect(() => validateName('a\u0000b')).toThrow(/control, format or separator character/);
    expect(() => validateName('a\u0085b')).toThrow(/control, format or separator character/);
    // Format and separator characters reorder or hide text in terminals and logs; the message
    // names them without printing them.
    for (const character of ['\u202e', '\ufeff', '\u2028', '\u2029', '\u200b', '\u00ad']) {
      let message = '';
      try {
        validateName(`invoice${character}txt`);
      } catch (error) {
        message = (error as Error).message;
      }
      expect(message).toMatch(/format or separator character/);
      expect(message).not.toContain(character);
      expect(message).toContain(`\\u${character.codePointAt(0)?.toString(16).padStart(4, '0')}`);
    }
    expect(validateName('caf\u00e9 \u{1f600}')).toBe('caf\u00e9 \u{1f600}');
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

const someGranularities = fc.subarray([...granularities], { minLength: 1 });
const anInstant = fc.integer({ min: Date.UTC(2020, 0, 1), max: Date.UTC(2030, 0, 1) });
const aCounter = fc.string({ minLength: 1, maxLength: 12 }).filter((s) => !s.includes('\u001f'));

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

describe('SerialQueue', () => {
  it('runs tasks one at a time, in the order handed in, a failure not stopping the next', async () => {
    const turns = new SerialQueue();
    const log: string[] = [];
    let running = 0;
    const task =
      (name: string, fail = false) =>
      async () => {
        running++;
        expect(running).toBe(1);
        await new Promise((resolve) => setTimeout(resolve, 5));
        log.push(name);
        running--;
        if (fail) throw new Error(name);
        return name;
      };
    const results = await Promise.allSettled([
      turns.run(task('a')),
      turns.run(task('b', true)),
      turns.run(task('c')),
    ]);
    expect(log).toEqual(['a', 'b', 'c']);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
  });
});

describe('forEachLimited', () => {
  it('keeps at most `limit` under way, and reports a failure once those under way are done', async () => {
    let running = 0;
    let most = 0;
    const done: number[] = [];
    const failure = forEachLimited([0, 1, 2, 3, 4, 5, 6, 7], 3, async (item) => {
      running++;
      most = Math.max(most, running);
      // Item 1 fails early; items 0 and 2, already under way, take longer.
      await new Promise((resolve) => setTimeout(resolve, item === 1 ? 1 : 20));
      running--;
      if (item === 1) throw new Error('item 1');
      done.push(item);
    });
    await expect(failure).rejects.toThrow('item 1');
    expect(running).toBe(0);
    expect(most).toBe(3);
    // Nothing after the failure was handed out, and what was under way finished.
    expect(done.sort()).toEqual([0, 2]);
  });
});

describe('redactSecrets', () => {
  it('takes passwords out of URLs, query strings and bearer credentials', () => {
    const cases: [string, string][] = [
      ['redis://u:hunter2pass@host:6379/0', 'redis://u:***@host:6379/0'],
      ['redis://:hunter2pass@host', 'redis://:***@host'],
      ['postgres://app:p@ss@word@db/tally', 'postgres://app:***@db/tally'],
      [
        'see postgresql://a:b@c/d and rediss://e:f@g',
        'see postgresql://a:***@c/d and rediss://e:***@g',
      ],
      ['redis://host/0?password=hunter2pass&db=1', 'redis://host/0?password=***&db=1'],
      ['Authorization: Bearer abcdef0123456789', 'Authorization: Bearer ***'],
      ['redis://host:6379 has no password', 'redis://host:6379 has no password'],
    ];
    for (const [text, redacted] of cases) expect(redactSecrets(text), text).toBe(redacted);
  });

  it('reach every field of a log line, however deep, and the credentials of Redis commands', () => {
    const lines: string[] = [];
    const logger = createLogger({
      level: 'info',
      format: 'json',
      destination: { write: (line: string) => lines.push(line) },
    });
    let deep: Record<string, unknown> = { url: 'redis://u:hunter2pass@host' };
    for (let i = 0; i < 20; i++) deep = { nested: deep };
    const refused = Object.assign(new Error('WRONGPASS'), {
      command: { name: 'hello', args: ['3', 'AUTH', 'u', 'hunter2pass'] },
    });
    logger.warn({ deep, err: refused }, 'see redis://u:hunter2pass@host');
    expect(lines.join('')).toContain('WRONGPASS');
    expect(lines.join('')).not.toContain('hunter2pass');
  });
});

describe('sharedFor', () => {
  it('starts one computation per window, whatever the number of callers', async () => {
    let started = 0;
    const shared = sharedFor(200, () => Promise.resolve(++started));
    expect(await Promise.all([shared(), shared(), shared()])).toEqual([1, 1, 1]);
    expect(await shared()).toBe(1);
    await new Promise((resolve) => setTimeout(resolve, 250));
    expect(await shared()).toBe(2);
  });
});
