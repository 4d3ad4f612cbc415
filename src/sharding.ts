/**
 * The shard a counter belongs to: FNV-1a (32-bit) of its UTF-8 bytes, modulo the shard count.
 * The shard count is fixed for the life of a store (recorded in PostgreSQL), because changing it
 * would route one counter to two shards.
 */
export function shardOf(name: string, shards: number): number {
  let hash = 0x811c9dc5;
  for (const byte of Buffer.from(name, 'utf8')) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash % shards;
}
