import { ValidationError } from '../errors.js';
import { shardKeys } from '../redis/shard-keys.js';
import { withShardLock } from '../redis/shard-lock.js';
import type { EngineContext } from './engine-context.js';
import { flushShard } from './flusher.js';
import { refusedInflightBatch } from './ledger-pruning.js';
import { reconcileShard } from './reconciler.js';
import { dropQuotaUsage } from './quota-seeding.js';

export type RefusedBatchDecision = 'discard' | 'apply';

export interface ResolvedBatch {
  shard: number;
  batchId: string;
  decision: RefusedBatchDecision;
  /** Deltas the batch held (one per counter and smallest bucket). */
  deltas: number;
}

/** The batch must still be the shard's refused one: another operator may have acted first. */
async function assertRefused(ctx: EngineContext, shard: number, batchId: string): Promise<void> {
  const refused = await refusedInflightBatch(ctx, shard);
  if (refused !== batchId) {
    throw new ValidationError(
      `Shard ${shard} has no refused batch ${JSON.stringify(batchId)}` +
        (refused === undefined
          ? ' (none of its batches is refused).'
          : ` (the refused one is ${refused}).`),
    );
  }
}

/**
 * An operator's decision on a refused batch (docs/operations.md, "A refused batch"), checked
 * and carried out under the shard's lock, so that two decisions cannot both go through.
 * `discard` drops the batch, then rebuilds the shard's Redis totals from PostgreSQL + pending;
 * `apply` applies it, and only it.
 */
export async function resolveRefusedBatch(
  ctx: EngineContext,
  shard: number,
  batchId: string,
  decision: RefusedBatchDecision,
  storeWasSetUp: boolean,
): Promise<ResolvedBatch> {
  const keys = shardKeys(ctx.config.keyPrefix, shard);
  // The in-flight hash of a batch never changes: its size read now is the size acted on.
  const deltas = await ctx.redis.hlen(keys.inflight);
  if (decision === 'apply') {
    await flushShard(ctx, shard, {
      applyRefused: { batchId, check: () => assertRefused(ctx, shard, batchId) },
    });
    // Quota seeds counted the refused batch as applied (its verdict until now), so their
    // usage lacks it: dropped, they seed again from PostgreSQL, which has it now.
    await dropQuotaUsage(ctx, shard);
    return { shard, batchId, decision, deltas };
  }
  await withShardLock(ctx, keys.lock, async () => {
    await assertRefused(ctx, shard, batchId);
    if (!(await ctx.scripts.acknowledge(keys, batchId, false))) {
      throw new ValidationError(`Batch ${batchId} left shard ${shard} meanwhile; nothing done.`);
    }
    ctx.config.logger.warn({ shard, batchId, deltas }, 'refused batch discarded');
  });
  await reconcileShard(ctx, shard, { repair: true, storeWasSetUp, reportRecordedLosses: false });
  return { shard, batchId, decision, deltas };
}
