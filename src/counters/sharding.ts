/**
 * The shard a counter belongs to: FNV-1a (32-bit) of its UTF-8 bytes, modulo the shard count.
 * The shard count is fixed for the life of a store (recorded in PostgreSQL), because changing it
 * would route one counter to two shards.
 *
 * The bytes are encoded here as they are hashed rather than by Buffer.from: every increment
 * routes its counter, and a Buffer per name was 7 % of the hot path's allocation. The encoding
 * is Buffer.from's, a lone surrogate included (U+FFFD), so every process and version routes a
 * counter alike.
 */
export function shardOf(name: string, shards: number): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) {
    let code = name.charCodeAt(i);
    if (code < 0x80) {
      hash = mix(hash, code);
      continue;
    }
    if (code < 0x800) {
      hash = mix(hash, 0xc0 | (code >> 6));
      hash = mix(hash, 0x80 | (code & 0x3f));
      continue;
    }
    if (code >= 0xd800 && code <= 0xdfff) {
      const next = name.charCodeAt(i + 1);
      if (code <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
        const point = 0x10000 + ((code - 0xd800) << 10) + (next - 0xdc00);
        hash = mix(hash, 0xf0 | (point >> 18));
        hash = mix(hash, 0x80 | ((point >> 12) & 0x3f));
        hash = mix(hash, 0x80 | ((point >> 6) & 0x3f));
        hash = mix(hash, 0x80 | (point & 0x3f));
        i++;
        continue;
      }
      code = 0xfffd;
    }
    hash = mix(hash, 0xe0 | (code >> 12));
    hash = mix(hash, 0x80 | ((code >> 6) & 0x3f));
    hash = mix(hash, 0x80 | (code & 0x3f));
  }
  return hash % shards;
}

/** One FNV-1a step: the hash after one more byte. */
function mix(hash: number, byte: number): number {
  return Math.imul(hash ^ byte, 0x01000193) >>> 0;
}
