import { redisFailure } from '../redis/connection.js';
import { parsePendingField, tagBuckets, type TagBuckets } from '../redis/bucket-tags.js';
import { shardKeys } from '../redis/shard-keys.js';
import type { EngineContext } from './engine-context.js';

/** What one shard held, read atomically, for a query over many counters. */
export interface ShardDeltas {
  shard: number;
  /** The shard's snapshot count when read: a flush that snapshots changes it. */
  snapshots: number;
  /** The in-flight batch ('' for none) and its snapshot time (Redis' clock, ms). */
  batchId: string;
  snapshotMs: string;
  /** Flat (field, delta) pairs: pending, then in flight. */
  pending: readonly string[];
  inflight: readonly string[];
}

/** Every shard's unflushed fields matching `pattern` (read-matching.lua), one call per shard. */
export function readShardDeltas(
  ctx: EngineContext,
  pattern: string,
  what: string,
): Promise<ShardDeltas[]> {
  return Promise.all(
    Array.from({ length: ctx.config.shards }, async (_, shard) => {
      const reply = (await ctx.scripts
        .readMatching(shardKeys(ctx.config.keyPrefix, shard), pattern)
        .catch((error: unknown) => {
          throw redisFailure(error, 'read', what);
        })) as unknown[];
      const [snapshots, batchId, snapshotMs, pendingFields] = reply;
      const pairs = reply.slice(4).map(String);
      return {
        shard,
        snapshots: Number(snapshots),
        batchId: String(batchId),
        snapshotMs: String(snapshotMs),
        pending: pairs.slice(0, 2 * Number(pendingFields)),
        inflight: pairs.slice(2 * Number(pendingFields)),
      };
    }),
  );
}

/** Whether any shard snapshotted (a flush moved deltas) since `before` was read. */
export async function snapshotsMoved(
  ctx: EngineContext,
  before: readonly ShardDeltas[],
  what: string,
): Promise<boolean> {
  const now = await Promise.all(
    before.map((read) =>
      ctx.redis
        .get(shardKeys(ctx.config.keyPrefix, read.shard).snapshots)
        .catch((error: unknown) => {
          throw redisFailure(error, 'read', what);
        }),
    ),
  );
  return now.some((count, i) => Number(count ?? 0) !== before[i]?.snapshots);
}

/** Visits each (counter, bucket tag's buckets, delta) of flat (field, delta) pairs. */
export function eachUnflushed(
  pairs: readonly string[],
  visit: (counter: string, buckets: TagBuckets, delta: string) => void,
): void {
  const tags = new Map<string, TagBuckets>();
  for (let i = 0; i < pairs.length; i += 2) {
    const { tag, counter } = parsePendingField(pairs[i] ?? '');
    let buckets = tags.get(tag);
    if (buckets === undefined) tags.set(tag, (buckets = tagBuckets(tag)));
    visit(counter, buckets, pairs[i + 1] ?? '0');
  }
}
