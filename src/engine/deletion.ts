import type pg from 'pg';
import { canonicalName, controlCharacters, type CounterRef } from '../counters/counter-name.js';
import { shardOf } from '../counters/sharding.js';
import { TallyError, ValidationError } from '../errors.js';
import { redisFailure } from '../redis/connection.js';
import { ScriptStatus } from '../redis/scripts.js';
import { withShardLock } from '../redis/shard-lock.js';
import { shardKeys } from '../redis/shard-keys.js';
import { postgresFailure } from '../store/pool.js';
import { bucketSql, deletionSql } from '../store/sql.js';
import { withClient, withTransaction } from '../store/transaction.js';
import { forEachLimited } from './concurrency.js';
import { selectedCounterNames } from './discovery.js';
import type { EngineContext } from './engine-context.js';
import { reachFaultPoint } from './fault-points.js';
import {
  compareCodePoints,
  resolveSelection,
  type CounterSelection,
  type Selection,
} from './query-spec.js';

/*
 * Deleting counters (docs/design.md, "Deleting counters"). Per shard, in chunks, under the
 * shard's lock (so no flush or reconcile of the shard runs, and no new batch is frozen: only
 * the lock's holder snapshots):
 *
 * 1. Read the batch in flight, B (or none).
 * 2. One PostgreSQL transaction, under the shard's deletion lock (which flush transactions of
 *    the shard take too): the counters' totals, buckets and labels go, and tombstones
 *    (counter, B) are written unless the ledger has B. A flusher that read B before step 3 and
 *    was paused past its lock applies B later without those counters.
 * 3. One Redis script: the counters' totals, pending and in-flight deltas, new-counter marks
 *    and quota usage go, atomically. An increment before it is deleted with the counter; one
 *    after it counts from 0.
 *
 * The deletion's record is written first, `running`, and marked `done` at the end. A process
 * that dies between leaves it running: every step is idempotent, so the worker
 * (finishDeletions) runs it again, and what was counted meanwhile is deleted with it.
 */

/** What to delete: one counter (a name, or a name with labels), or a selection of them. */
export type DeletionTarget = CounterRef | CounterSelection;

export interface DeleteOptions {
  /** List what would go, and delete nothing. */
  dryRun?: boolean;
  /** Who asked, for the record (tally.counter_deletions): up to 200 characters. */
  requestedBy?: string;
}

export interface DeletionResult {
  /** The record's id in tally.counter_deletions; null for a dry run. */
  deletionId: string | null;
  /** How many counters went (or would go): those Redis or PostgreSQL had. */
  counters: number;
  /** The first 1,000 of them, in byte order. */
  names: string[];
  dryRun: boolean;
}

/** Names in a result, at most. */
const namesShown = 1_000;
/** Counters per chunk: one PostgreSQL transaction and one Redis script under the shard lock. */
const chunkSize = 1_000;
/** Shards deleted from at once. */
const shardConcurrency = 4;
/** Bucket rows deleted per statement before a chunk's locked step. */
const bucketRowsPerStatement = 10_000;
/** A chunk whose lock was lost (a paused process) is tried again this many times. */
const maxChunkAttempts = 3;

/** A target as the record keeps it, and as a resumed deletion resolves it again. */
type Selector = { name: string } | CounterSelection;

interface ResolvedTarget {
  selector: Selector;
  /** One counter's name, or the selection of many. */
  name?: string;
  selection?: Selection;
}

function resolveTarget(target: unknown): ResolvedTarget {
  if (typeof target === 'string' || (isObject(target) && 'name' in target)) {
    const name = canonicalName(target as CounterRef);
    return { selector: { name }, name };
  }
  if (!isObject(target) || !('counter' in target || 'prefix' in target)) {
    throw new ValidationError(
      'Delete takes a counter (a name, or { name, labels }) or a selection ({ counter, where } ' +
        'for labelled counters, { prefix } for plain names).',
    );
  }
  const input = target as CounterSelection;
  if (input.prefix === '') {
    throw new ValidationError(
      'A deletion by prefix needs a prefix: "" would take every plain counter.',
    );
  }
  const selection = resolveSelection(input, undefined);
  const selector: CounterSelection =
    selection.kind === 'plain'
      ? { prefix: selection.prefix }
      : {
          counter: selection.base,
          where: Object.fromEntries(selection.where.map(([key, values]) => [key, [...values]])),
        };
  return { selector, selection };
}

const isObject = (value: unknown): value is object =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

function requester(value: unknown): string {
  if (value === undefined) return 'library';
  if (
    typeof value !== 'string' ||
    value.length === 0 ||
    value.length > 200 ||
    controlCharacters.test(value)
  ) {
    throw new ValidationError('requestedBy must be 1–200 characters without control characters.');
  }
  return value;
}

/** The counters a target takes now, in byte order. */
async function targetNames(ctx: EngineContext, target: ResolvedTarget): Promise<string[]> {
  if (target.selection !== undefined) {
    return selectedCounterNames(ctx, target.selection, 'a counter deletion');
  }
  return target.name === undefined ? [] : [target.name];
}

/**
 * Refuses while an upgraded store's buckets move into the partitions (schema 6): a counter's
 * rows in the old table would be moved back after its deletion.
 */
async function refuseDuringBucketMove(ctx: EngineContext): Promise<void> {
  const { rows } = await ctx.pool
    .query<{ exists: boolean }>(bucketSql.unpartitionedExists)
    .catch((error: unknown) => {
      throw postgresFailure(error, 'a counter deletion');
    });
  if (rows[0]?.exists === true) {
    throw new TallyError(
      'BUSY',
      "The upgraded store's bucket rows are still moving into the partitions (schema 6; " +
        '`tally status` says so): delete counters once the worker has finished the move.',
    );
  }
}

/** Which of one shard's names Redis or PostgreSQL has (for a dry run). */
async function existing(ctx: EngineContext, shard: number, names: string[]): Promise<string[]> {
  const keys = shardKeys(ctx.config.keyPrefix, shard);
  const inRedis = await Promise.all(
    names.map((name) => ctx.redis.hexists(keys.totals, name)),
  ).catch((error: unknown) => {
    throw redisFailure(error, 'read', 'a counter deletion');
  });
  const { rows } = await ctx.pool
    .query<{ name: string }>(deletionSql.stored, [names])
    .catch((error: unknown) => {
      throw postgresFailure(error, 'a counter deletion');
    });
  const stored = new Set(rows.map((row) => row.name));
  return names.filter((name, i) => inRedis[i] === 1 || stored.has(name));
}

/** Deletes one chunk of one shard's counters; the names Redis or PostgreSQL had. */
async function deleteChunk(
  ctx: EngineContext,
  deletionId: string,
  shard: number,
  names: readonly string[],
): Promise<string[]> {
  const keys = shardKeys(ctx.config.keyPrefix, shard);
  // The bulk of the bucket rows first, in short statements, without the shard's locks: all of
  // them go anyway, and the locked step deletes what flushes wrote meanwhile.
  for (;;) {
    const { rowCount } = await ctx.pool
      .query(deletionSql.deleteSomeBuckets, [names, bucketRowsPerStatement])
      .catch((error: unknown) => {
        throw postgresFailure(error, 'a counter deletion');
      });
    if ((rowCount ?? 0) < bucketRowsPerStatement) break;
  }
  for (let attempt = 1; ; attempt++) {
    const found = await withShardLock(ctx, keys.lock, async (token) => {
      const batchId = await ctx.redis.hget(keys.inflightMeta, 'batch').catch((error: unknown) => {
        throw redisFailure(error, 'read', 'a counter deletion');
      });
      const stored = await withTransaction(ctx.pool, async (client) => {
        await client.query(deletionSql.lockShard, [shard]);
        await client.query(deletionSql.recordNames, [deletionId, names]);
        const { rows } = await client.query<{ name: string }>(deletionSql.deleteTotals, [
          names,
          shard,
        ]);
        await client.query(deletionSql.deleteBuckets, [names]);
        await client.query(deletionSql.deleteLabels, [names]);
        if (batchId !== null) await client.query(deletionSql.tombstone, [names, shard, batchId]);
        return rows.map((row) => row.name);
      }).catch((error: unknown) => {
        throw postgresFailure(error, 'a counter deletion');
      });
      await reachFaultPoint('delete-after-postgres');
      const reply = await ctx.scripts.deleteCounters(keys, token, names).catch((error: unknown) => {
        throw redisFailure(error, 'write', 'a counter deletion');
      });
      if (reply[0] === ScriptStatus.lostLock) return undefined;
      // Only the lock's holder freezes a batch (snapshot.lua): none can have replaced B.
      const inflightNow = String(reply[1]);
      if (inflightNow !== '' && inflightNow !== batchId) {
        throw new Error(`batch ${inflightNow} was frozen on shard ${shard} under its lock`);
      }
      return [...new Set([...stored, ...reply.slice(2).map(String)])];
    });
    if (found !== undefined) return found;
    // The lock expired under us (this process was paused): the steps are idempotent, so the
    // chunk runs again under a new one.
    if (attempt >= maxChunkAttempts) {
      throw new TallyError(
        'BUSY',
        `Shard ${shard}'s lock kept expiring during a counter deletion; run it again.`,
      );
    }
  }
}

/** Deletes the names from every shard; those Redis or PostgreSQL had, in byte order. */
async function deleteNames(
  ctx: EngineContext,
  deletionId: string,
  names: readonly string[],
): Promise<string[]> {
  const byShard = new Map<number, string[]>();
  for (const name of names) {
    const shard = shardOf(name, ctx.config.shards);
    const list = byShard.get(shard);
    if (list === undefined) byShard.set(shard, [name]);
    else list.push(name);
  }
  const deleted: string[] = [];
  await forEachLimited([...byShard], shardConcurrency, async ([shard, shardNames]) => {
    for (let start = 0; start < shardNames.length; start += chunkSize) {
      const chunk = shardNames.slice(start, start + chunkSize);
      deleted.push(...(await deleteChunk(ctx, deletionId, shard, chunk)));
    }
  });
  return deleted.sort(compareCodePoints);
}

/**
 * Runs a deletion this session has claimed (a session advisory lock) to its end: the counters
 * it took, in byte order. Run again after a crash, it takes the counters the first run
 * recorded as well as what the target selects now.
 */
async function runClaimed(
  ctx: EngineContext,
  client: pg.ClientBase,
  deletionId: string,
  target: ResolvedTarget,
): Promise<string[]> {
  try {
    const taken = (await client.query<{ name: string }>(deletionSql.namesTaken, [deletionId])).rows;
    const earlier = new Set(taken.map((row) => row.name));
    // Listed once claimed: a resumed deletion takes what was counted since, too.
    const names = new Set([...earlier, ...(await targetNames(ctx, target))]);
    const found = await deleteNames(ctx, deletionId, [...names]);
    // Those an earlier run took count, though this one found nothing of them left.
    const deleted = [...new Set([...found, ...earlier])].sort(compareCodePoints);
    await client.query(deletionSql.finish, [deletionId, deleted.length]);
    return deleted;
  } finally {
    await client.query(deletionSql.release, [deletionId]);
  }
}

/** Runs a recorded deletion unless another process holds it: what it took, or undefined. */
function runRecorded(
  ctx: EngineContext,
  deletionId: string,
  target: ResolvedTarget,
): Promise<string[] | undefined> {
  return withClient(ctx.pool, async (client) => {
    const claim = await client.query<{ claimed: boolean }>(deletionSql.tryClaim, [deletionId]);
    if (claim.rows[0]?.claimed !== true) return undefined;
    return runClaimed(ctx, client, deletionId, target);
  }).catch(asDeletionFailure);
}

const asDeletionFailure = (error: unknown): never => {
  throw error instanceof TallyError ? error : postgresFailure(error, 'a counter deletion');
};

export async function deleteCounters(
  ctx: EngineContext,
  target: DeletionTarget,
  options: DeleteOptions = {},
): Promise<DeletionResult> {
  const untyped: unknown = options;
  if (!isObject(untyped)) throw new ValidationError('Delete options must be an object.');
  const resolved = resolveTarget(target);
  const requestedBy = requester(options.requestedBy);
  if (options.dryRun === true) {
    let names = await targetNames(ctx, resolved);
    if (resolved.name !== undefined) {
      names = await existing(ctx, shardOf(resolved.name, ctx.config.shards), names);
    }
    return {
      deletionId: null,
      counters: names.length,
      names: names.slice(0, namesShown),
      dryRun: true,
    };
  }
  await refuseDuringBucketMove(ctx);
  const { deletionId, deleted } = await withClient(ctx.pool, async (client) => {
    const { rows } = await client.query<{ id: string; claimed: boolean }>(deletionSql.begin, [
      requestedBy,
      JSON.stringify(resolved.selector),
    ]);
    const [record] = rows;
    if (record?.claimed !== true) {
      throw new Error('a new deletion record was claimed by another session');
    }
    return { deletionId: record.id, deleted: await runClaimed(ctx, client, record.id, resolved) };
  }).catch(asDeletionFailure);
  ctx.config.logger.info(
    { deletionId, requestedBy, selector: resolved.selector, counters: deleted.length },
    'counters deleted',
  );
  return {
    deletionId,
    counters: deleted.length,
    names: deleted.slice(0, namesShown),
    dryRun: false,
  };
}

/**
 * Finishes the deletions a process left running when it died (the worker runs it every
 * minute); how many it finished. One that another process is running is left to it.
 */
export async function finishDeletions(ctx: EngineContext): Promise<number> {
  const { rows } = await ctx.pool
    .query<{ id: string; selector: Selector }>(deletionSql.running)
    .catch((error: unknown) => {
      throw postgresFailure(error, 'reading the running counter deletions');
    });
  let finished = 0;
  for (const row of rows) {
    const target = resolveTarget('name' in row.selector ? row.selector.name : row.selector);
    const deleted = await runRecorded(ctx, row.id, target);
    if (deleted === undefined) continue;
    ctx.config.logger.warn(
      { deletionId: row.id, counters: deleted.length },
      'finished a counter deletion a process had left running',
    );
    finished++;
  }
  return finished;
}
