import { redisFailure } from '../redis/connection.js';
import { parsePendingField, tagBuckets, type TagBuckets } from '../redis/bucket-tags.js';
import { ScriptStatus } from '../redis/scripts.js';
import { shardKeys } from '../redis/shard-keys.js';
import type { EngineContext } from './engine-context.js';

/** Where one shard's flushes stood when read (read-batch-state.lua), atomically. */
export interface BatchState {
  shard: number;
  /** The shard's snapshot count: a flush that snapshots changes it. */
  snapshots: number;
  /** The in-flight batch ('' for none) and its snapshot time (Redis' clock, ms). */
  batchId: string;
  snapshotMs: string;
  /** Counters created in Redis since the last applied batch that match the read's pattern. */
  newCounters: readonly string[];
}

/** Every shard's batch state, and its new counters matching `newCounterPattern` ('' for none). */
export function readBatchStates(
  ctx: EngineContext,
  newCounterPattern: string,
  what: string,
): Promise<BatchState[]> {
  return Promise.all(
    Array.from({ length: ctx.config.shards }, async (_, shard) => {
      const reply = await ctx.scripts
        .readBatchState(shardKeys(ctx.config.keyPrefix, shard), newCounterPattern)
        .catch((error: unknown) => {
          throw redisFailure(error, 'read', what);
        });
      const [snapshots, batchId, snapshotMs, ...newCounters] = reply.map(String);
      return {
        shard,
        snapshots: Number(snapshots),
        batchId: batchId ?? '',
        snapshotMs: snapshotMs ?? '0',
        newCounters,
      };
    }),
  );
}

/**
 * What a query's snapshot says of a shard's in-flight batch: its ledger has it, or lacks it
 * (its deltas count), or refuses it (before the ledger's horizon: counted as applied until an
 * operator resolves it, so R2 accepts no change of it).
 */
export type BatchVerdict = 'applied' | 'lacked' | 'refused';

/** One shard's unflushed deltas of a query's counters: flat (field, delta) pairs. */
export interface ShardDeltas {
  shard: number;
  pending: readonly string[];
  /** The in-flight batch's, when read: see `newBatch`. */
  inflight: readonly string[];
  /**
   * A batch snapshotted since the batch state was read, still in flight (its snapshot time):
   * `inflight` holds its deltas, counted only if the query's snapshot lacks it.
   */
  newBatch: { batchId: string; snapshotMs: string } | undefined;
}

/**
 * Every shard's unflushed deltas of a query's counters, read after its PostgreSQL snapshot
 * (read-unflushed.lua): the pending ones, and the in-flight ones of the shards with a batch in
 * flight that `verdicts` does not hold (the snapshot's ledger lacks it). `counters` are those
 * PostgreSQL names, by shard (undefined: too many to name; every field matching `pattern` is
 * read). Undefined when flushes moved deltas in a way the query cannot account for (it starts
 * over).
 */
export async function readUnflushed(
  ctx: EngineContext,
  states: readonly BatchState[],
  read: {
    verdicts: ReadonlyMap<number, Exclude<BatchVerdict, 'lacked'>>;
    pattern: string;
    counters: readonly (readonly string[])[] | undefined;
  },
  what: string,
): Promise<ShardDeltas[] | undefined> {
  const replies = await Promise.all(
    states.map((state) =>
      ctx.scripts
        .readUnflushed(shardKeys(ctx.config.keyPrefix, state.shard), {
          snapshots: state.snapshots,
          batchId: state.batchId,
          verdict: state.batchId === '' ? 'applied' : (read.verdicts.get(state.shard) ?? 'lacked'),
          pattern: read.pattern,
          counters: read.counters === undefined ? undefined : (read.counters[state.shard] ?? []),
        })
        .catch((error: unknown) => {
          throw redisFailure(error, 'read', what);
        }),
    ),
  );
  if (replies.some((reply) => reply[0] !== ScriptStatus.ok)) return undefined;
  return replies.map((reply, i) => {
    const state = states[i] as BatchState;
    const [, batchId = '', snapshotMs = '0', pendingFields] = reply.slice(0, 4).map(String);
    const pairs = reply.slice(4).map(String);
    return {
      shard: state.shard,
      pending: pairs.slice(0, 2 * Number(pendingFields)),
      inflight: pairs.slice(2 * Number(pendingFields)),
      newBatch: batchId !== '' && batchId !== state.batchId ? { batchId, snapshotMs } : undefined,
    };
  });
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
