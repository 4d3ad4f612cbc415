import { randomUUID } from 'node:crypto';
import { postgresFailure } from '../store/pool.js';
import { flushSql } from '../store/sql.js';
import { withTransaction } from '../store/transaction.js';
import { ledgerClockMarginMs } from './ledger-pruning.js';
import { batchRows, type BatchRows } from './batch-rows.js';
import type { SerialQueue } from './concurrency.js';
import type { EngineContext } from './engine-context.js';
import { FlushError, TallyError, ValidationError } from '../errors.js';
import { brokenOnPurpose, reachFaultPoint } from './fault-points.js';
import { withShardLock } from '../redis/shard-lock.js';
import { onlineReplicas } from '../redis/replication.js';
import type { SnapshotKeeping } from '../redis/scripts.js';
import { shardKeys, type ShardKeys } from '../redis/shard-keys.js';

/** One batch moved from Redis into PostgreSQL. */
export interface AppliedBatch {
  shard: number;
  batchId: string;
  /** Counters whose totals the batch changed. */
  counters: number;
  /** Bucket rows the batch changed. */
  buckets: number;
  /** The batch was left in flight by an earlier flush (crashed, or not yet acknowledged). */
  resumed: boolean;
  /** The ledger already held it: an earlier flush committed it, this one only acknowledged. */
  alreadyApplied: boolean;
}

/**
 * How long a flush waits for WAITAOF or WAIT before giving up on this attempt: 5 s, or less
 * than the command timeout (the client gives up on the command then).
 */
const snapshotKeepTimeoutMs = (ctx: EngineContext) =>
  Math.max(1, Math.min(5_000, Math.floor(ctx.config.redisCommandTimeoutMs * 0.8)));

export interface FlushShardOptions {
  /** How long to wait for another flush or reconcile of the shard (default: the lock TTL). */
  lockWaitMs?: number;
  /**
   * PostgreSQL transactions of the flushes sharing these turns run one at a time, while their
   * Redis steps and row preparation go on beside them (see Tally.flush).
   */
  postgresQueue?: SerialQueue;
  /**
   * Applies this refused in-flight batch, and nothing else, even though the ledger's horizon
   * refuses it (an operator's decision, engine/refused-batches.ts): it may have been applied
   * before. `check`, run under the shard's lock, confirms it is still the refused batch.
   */
  applyRefused?: { batchId: string; check: () => Promise<void> };
}

/** A batch in flight: its id, when it was snapshotted (Redis' clock), and whether resumed. */
interface InflightBatch {
  id: string;
  snapshotMs: number;
  resumed: boolean;
}

/**
 * Flushes one shard: resumes a batch left in flight, then snapshots and applies what is
 * pending. Returns the batches it applied (none when nothing was pending).
 */
export async function flushShard(
  ctx: EngineContext,
  shard: number,
  options: FlushShardOptions = {},
): Promise<AppliedBatch[]> {
  const keys = shardKeys(ctx.config.keyPrefix, shard);
  const work = async (lockToken: string) => {
    // Debug lines that bracket the time this process holds the shard: tests check from them
    // that no two processes ever flush one shard at once.
    ctx.config.logger.debug({ shard, event: 'flush-start', atMs: Date.now() }, 'flush start');
    try {
      return await snapshotAndApply(ctx, shard, keys, lockToken, options);
    } finally {
      ctx.config.logger.debug({ shard, event: 'flush-end', atMs: Date.now() }, 'flush end');
    }
  };
  return withShardLock(ctx, keys.lock, work, options.lockWaitMs);
}

async function snapshotAndApply(
  ctx: EngineContext,
  shard: number,
  keys: ShardKeys,
  lockToken: string,
  options: FlushShardOptions,
): Promise<AppliedBatch[]> {
  await reachFaultPoint('before-snapshot');
  await options.applyRefused?.check();
  const keep = await snapshotKeeping(ctx, shard, keys);
  const applied: AppliedBatch[] = [];
  // At most two rounds: a resumed batch, then the deltas that were pending behind it.
  for (let round = 0; round < 2; round++) {
    const snapshot = await ctx.scripts.snapshot(keys, randomUUID(), lockToken, keep);
    if (snapshot.state === 'empty') break;
    const override = options.applyRefused?.batchId;
    if (override !== undefined && snapshot.batchId !== override) {
      throw new ValidationError(
        `Batch ${JSON.stringify(override)} is no longer in flight on shard ${shard}.`,
      );
    }
    await reachFaultPoint('after-snapshot');
    const batch = {
      id: snapshot.batchId,
      // The operator's override: a snapshot time no horizon can refuse.
      snapshotMs: override === undefined ? snapshot.snapshotMs : Number.MAX_SAFE_INTEGER,
      resumed: snapshot.state === 'resumed',
    };
    applied.push(await applyBatch(ctx, shard, keys, batch, options.postgresQueue));
    // The operator's decision was about that batch alone; what is pending behind it waits for
    // the next flush.
    if (snapshot.state === 'created' || override !== undefined) break;
  }
  return applied;
}

/**
 * How long a shard's server may have fewer online replicas than its flushes saw before they
 * apply batches again. Longer than a failover's window (a Sentinel switch-over, a cluster's node
 * timeout), shorter than an outage of a replica that nobody replaces.
 */
export const replicaFenceMs = 60_000;

/**
 * How many replicas a flush's snapshot must reach before PostgreSQL applies it (WAIT, sent with
 * the snapshot; and the AOF fsync, WAITAOF), so that it outlives a crash or a failover of Redis:
 * a Redis that forgot it (restarted from an AOF written before it, or a replica promoted before
 * it had it) would hold its deltas in pending again, under no batch id the ledger knows, and
 * they would be applied twice. Every online replica, and at least `minReplicas`.
 *
 * Checked on every flush, with or without anything pending, it also fences a primary that was
 * just replaced: between a replica's promotion and the old primary's demotion the old one still
 * takes writes, its other replicas still acknowledge them, and a batch it snapshots then is not
 * in the new primary's history, whose pending still holds those deltas (seen: every shard counted
 * twice after a SENTINEL FAILOVER). The old primary has lost a replica, the promoted one: a
 * server with fewer online replicas than the shard's flushes saw within `replicaFenceMs` applies
 * nothing.
 */
async function snapshotKeeping(
  ctx: EngineContext,
  shard: number,
  keys: ShardKeys,
): Promise<SnapshotKeeping> {
  const online = await onlineReplicas(ctx.redis, keys.inflight);
  const seen = Number((await ctx.redis.get(keys.replicasSeen)) ?? 0);
  if (online < seen) {
    throw new TallyError(
      'UNAVAILABLE',
      `Shard ${shard}'s Redis has ${online} online replicas where its flushes saw ${seen}: a ` +
        'failover may be under way, and a batch applied from a replaced primary would count ' +
        `twice. The flush waits until they are back (or for ${replicaFenceMs / 1000} s).`,
    );
  }
  if (online > 0) await ctx.redis.set(keys.replicasSeen, online, 'PX', replicaFenceMs);
  return {
    replicas: Math.max(ctx.config.minReplicas, online),
    fsync: ctx.durability.waitaof,
    timeoutMs: snapshotKeepTimeoutMs(ctx),
  };
}

async function applyBatch(
  ctx: EngineContext,
  shard: number,
  keys: ShardKeys,
  batch: InflightBatch,
  postgresQueue: SerialQueue | undefined,
): Promise<AppliedBatch> {
  // The flat reply, not ioredis' object: building an object of tens of thousands of fields
  // cost as much as the rest of the preparation.
  const rows = batchRows((await ctx.redis.call('HGETALL', keys.inflight)) as string[]);
  await reachFaultPoint('before-transaction');
  const transaction = () => applyInPostgres(ctx, shard, keys, batch, rows);
  const outcome = await (postgresQueue?.run(transaction) ?? transaction());
  if (outcome instanceof Date) await refuse(ctx, shard, keys, batch, outcome);
  await reachFaultPoint('after-commit');

  const acknowledged = ctx.scripts.acknowledge(keys, batch.id, true);
  setImmediate(() => {
    void reachFaultPoint('during-acknowledge');
  });
  await acknowledged;
  return {
    shard,
    batchId: batch.id,
    counters: rows.counters.names.length,
    buckets: rows.buckets.names.length,
    resumed: batch.resumed,
    alreadyApplied: outcome === 'already-applied',
  };
}

/**
 * Keeps a batch the ledger's horizon refused in flight, marked (status and reconcile report it),
 * and throws BATCH_REFUSED: every later flush of the shard stops here until an operator decides
 * (docs/operations.md, "A refused batch").
 */
async function refuse(
  ctx: EngineContext,
  shard: number,
  keys: ShardKeys,
  batch: InflightBatch,
  horizon: Date,
): Promise<never> {
  await ctx.scripts.markRefused(keys, batch.id, horizon.getTime());
  // 0: the batch's meta had no snapshot time (written by hand; every version stamps it).
  const snapshot =
    batch.snapshotMs > 0 ? `at ${new Date(batch.snapshotMs).toISOString()}` : 'at an unknown time';
  throw new FlushError(
    shard,
    batch.id,
    new TallyError(
      'BATCH_REFUSED',
      `Shard ${shard}'s in-flight batch ${batch.id} was snapshotted ${snapshot}, and the ` +
        `flush ledger, pruned up to ${horizon.toISOString()} (less an hour's margin for the ` +
        "servers' clocks), has no row for it: it may have been applied already (a Redis " +
        'restored from an old backup?). It stays ' +
        `in flight, unapplied; decide with \`tally resolve-batch ${shard} ${batch.id} ` +
        '--discard|--apply` (docs/operations.md, "A refused batch").',
    ),
  );
}

/**
 * The batch's transaction: the ledger row, then (unless the ledger already had it) the totals
 * and the buckets. Returns the ledger horizon instead when it refused the batch (nothing done).
 */
async function applyInPostgres(
  ctx: EngineContext,
  shard: number,
  keys: ShardKeys,
  batch: InflightBatch,
  rows: BatchRows,
): Promise<'applied' | 'already-applied' | Date> {
  try {
    return await withTransaction(ctx.pool, async (client) => {
      const claim = await client.query<{ refused: boolean; inserted: boolean; horizon: Date }>({
        ...flushSql.claimBatch,
        values: [
          shard,
          batch.id,
          rows.counters.names.length,
          batch.snapshotMs,
          ledgerClockMarginMs,
        ],
      });
      const { refused, inserted, horizon } = claim.rows[0] ?? {};
      if (refused === true && horizon !== undefined) return horizon;
      // Tests only: a crash now would lose the batch, which the fault checker must catch.
      if (brokenOnPurpose('acknowledge-before-commit'))
        await ctx.scripts.acknowledge(keys, batch.id, true);
      if (inserted !== true) return 'already-applied';
      await client.query({
        ...flushSql.addToTotals,
        values: [rows.counters.names, rows.counters.deltas, shard, batch.id],
      });
      await reachFaultPoint('mid-transaction');
      if (rows.bucketGranularities.size > 0) {
        await client.query(flushSql.holdDefaultPartitions([...rows.bucketGranularities]));
      }
      await client.query({
        ...flushSql.addToBuckets,
        values: [
          rows.buckets.names,
          rows.buckets.granularities,
          rows.buckets.startsMs,
          rows.buckets.deltas,
          shard,
          batch.id,
        ],
      });
      return 'applied';
    });
  } catch (error) {
    throw new FlushError(
      shard,
      batch.id,
      postgresFailure(
        error,
        `the flush of shard ${shard} batch ${batch.id}; the batch stays in flight and the next ` +
          'flush retries it (the ledger keeps it from counting twice)',
      ),
    );
  }
}
