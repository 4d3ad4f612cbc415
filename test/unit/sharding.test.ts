import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { shardOf } from '../../src/counters/sharding.js';

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
