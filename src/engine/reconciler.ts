import type pg from 'pg';
import { parsePendingField } from '../redis/bucket-tags.js';
import { TallyError } from '../errors.js';
import { postgresFailure } from '../store/pool.js';
import { reconcileSql } from '../store/sql.js';
import type { EngineContext } from './engine-context.js';
import { withShardLock } from '../redis/shard-lock.js';
import { refusedInflightBatch } from './ledger-pruning.js';
import { dropQuotaUsage } from './quota-seeding.js';
import { ScriptStatus } from '../redis/scripts.js';
import { shardKeys, type ShardKeys } from '../redis/shard-keys.js';

export interface Drift {
  counter: string;
  /** What Redis held; null when the counter was missing there. */
  redisValue: number | null;
  /** PostgreSQL value + pending delta + in-flight delta not yet in the ledger. */
  expectedValue: number;
}

export interface ShardReconcileReport {
  shard: number;
  countersChecked: number;
  drift: Drift[];
  /** Redis was rewritten with the expected totals (repair mode, and there was something to fix). */
  repaired: boolean;
  /**
   * Redis had lost this shard's data (its epoch marker was gone in a store that was set up):
   * increments acknowledged but not yet flushed before the loss are gone. Found now, or found
   * earlier by a process that rebuilt the shard (`lossesFoundAt`).
   */
  redisLostData: boolean;
  /**
   * When running processes found this shard's Redis data gone and rebuilt it, since a repair
   * last reported such losses (ISO 8601). Empty for the rebuilds processes run themselves.
   */
  lossesFoundAt: string[];
  /**
   * When running processes found this shard gone back in time (a failover to a replica that was
   * behind, an AOF restart), and the least number of increment calls that were lost each time;
   * since a repair last reported them.
   */
  rewinds: { foundAt: string; callsLost: number }[];
  /**
   * The shard's in-flight batch, when flushes refuse it (snapshotted before the pruned part of
   * the ledger, with no ledger row: it may have been applied already). The shard is then not
   * checked (nothing to compare with until it is settled) nor repaired;
   * `Tally.resolveRefusedBatch` settles it.
   */
  refusedBatch: string | null;
}

export interface ReconcileShardOptions {
  repair: boolean;
  storeWasSetUp: boolean;
  /**
   * Report the losses processes recorded (an operator's reconcile); a repair then marks them
   * reported. A process rebuilding a shard it found empty records its loss instead.
   */
  reportRecordedLosses: boolean;
}

interface PostgresPage {
  rows: { name: string; value: string }[];
  inflightApplied: boolean;
}

/**
 * One page of a shard's PostgreSQL totals, read in the same statement (the same snapshot) as
 * whether the in-flight batch is in the ledger, so the two always agree.
 */
async function readPostgresPage(
  pool: pg.Pool,
  shard: number,
  batchId: string,
  after: string,
  limit: number,
): Promise<PostgresPage> {
  const { rows } = await pool
    .query<{ applied: boolean; rows: { name: string; value: string }[] }>({
      ...reconcileSql.totalsPage,
      values: [shard, batchId, after, limit],
    })
    .catch((error: unknown) => {
      throw postgresFailure(error, `the reconcile of shard ${shard}`);
    });
  const row = rows[0];
  return { rows: row?.rows ?? [], inflightApplied: row?.applied ?? false };
}

/** Every field name of a Redis hash, read in steps so a large hash does not block Redis. */
async function hashFields(ctx: EngineContext, key: string): Promise<string[]> {
  const fields: string[] = [];
  let cursor = '0';
  do {
    const [next, entries] = await ctx.redis.hscan(key, cursor, 'COUNT', 1000);
    for (let i = 0; i < entries.length; i += 2) fields.push(entries[i] as string);
    cursor = next;
  } while (cursor !== '0');
  return fields;
}

class BatchChanged extends Error {}

/** Compares one chunk in Redis (and repairs it); returns its drift. */
async function reconcileChunk(
  ctx: EngineContext,
  { keys, batchId, inflightApplied, repair, lockToken }: ChunkContext,
  pairs: [string, string][],
): Promise<Drift[]> {
  const reply = await ctx.scripts.reconcileChunk(keys, {
    batchId,
    inflightApplied,
    repair,
    lockToken,
    pairs,
  });
  if (reply[0] === ScriptStatus.batchChanged) throw new BatchChanged();
  if (reply[0] === ScriptStatus.lostLock) {
    throw new TallyError(
      'BUSY',
      `Lost shard lock ${keys.lock} during a repair (this process was paused past its TTL); ` +
        'the rest was not repaired: run it again.',
    );
  }
  const drift: Drift[] = [];
  for (let i = 1; i < reply.length; i += 3) {
    drift.push({
      counter: String(reply[i]),
      redisValue: reply[i + 1] === '' ? null : Number(reply[i + 1]),
      expectedValue: Number(reply[i + 2]),
    });
  }
  return drift;
}

/**
 * Checks (and with `repair`, rewrites) one shard's Redis totals against PostgreSQL, holding the
 * shard's flush lock so PostgreSQL cannot move underneath. Increments keep flowing: each chunk
 * is compared and repaired inside one script, atomically with respect to them. After a repair
 * the epoch marker is written, which lets increments and reads use the totals again.
 */
export async function reconcileShard(
  ctx: EngineContext,
  shard: number,
  options: ReconcileShardOptions,
): Promise<ShardReconcileReport> {
  const keys = shardKeys(ctx.config.keyPrefix, shard);
  const report = await withShardLock(ctx, keys.lock, async (lockToken) => {
    for (;;) {
      try {
        return await reconcileOnce(ctx, shard, keys, options, lockToken);
      } catch (error) {
        // A flush that lost the lock (paused past its TTL) moved the in-flight batch: read again.
        if (!(error instanceof BatchChanged)) throw error;
      }
    }
  });
  if (options.reportRecordedLosses) {
    const losses = await recordedLosses(ctx.pool, shard, options.repair);
    report.lossesFoundAt = losses.flatMap((loss) =>
      loss.callsLost === null ? [loss.foundAt] : [],
    );
    report.rewinds = losses.flatMap(({ foundAt, callsLost }) =>
      callsLost === null ? [] : [{ foundAt, callsLost }],
    );
    if (losses.length > 0) report.redisLostData = true;
  }
  return report;
}

/** The shard's losses not reported yet, oldest first; `markReported` marks them reported. */
async function recordedLosses(
  pool: pg.Pool,
  shard: number,
  markReported: boolean,
): Promise<{ foundAt: string; callsLost: number | null }[]> {
  const { rows } = await pool
    .query<{ found_at: Date; calls_lost: string | null }>(
      markReported ? reconcileSql.markLossesReported : reconcileSql.unreportedLosses,
      [shard],
    )
    .catch((error: unknown) => {
      throw postgresFailure(error, `the Redis losses recorded for shard ${shard}`);
    });
  return rows
    .map((row) => ({
      foundAt: row.found_at.toISOString(),
      callsLost: row.calls_lost === null ? null : Number(row.calls_lost),
    }))
    .sort((a, b) => a.foundAt.localeCompare(b.foundAt));
}

/** What a chunk is judged with: the in-flight batch read, whether the ledger has it, the mode. */
interface ChunkContext {
  keys: ShardKeys;
  batchId: string;
  inflightApplied: boolean;
  repair: boolean;
  lockToken: string;
}

/**
 * Compares every counter PostgreSQL has for the shard, page by page. The next page is read
 * while Redis checks this one: the two round trips overlap instead of adding up. Each chunk is
 * judged with its own page's ledger answer; the last answer is returned for the chunks after.
 */
async function compareStoredCounters(
  ctx: EngineContext,
  shard: number,
  chunk: Omit<ChunkContext, 'inflightApplied'>,
): Promise<{ drift: Drift[]; seen: Set<string>; inflightApplied: boolean }> {
  const chunkSize = ctx.config.reconcileChunkSize;
  const drift: Drift[] = [];
  const seen = new Set<string>();
  let page = await readPostgresPage(ctx.pool, shard, chunk.batchId, '', chunkSize);
  for (;;) {
    const last = page.rows.at(-1);
    if (last === undefined) return { drift, seen, inflightApplied: page.inflightApplied };
    const next = readPostgresPage(ctx.pool, shard, chunk.batchId, last.name, chunkSize);
    // If the chunk below throws first, this read's own failure must not go unhandled.
    next.catch(() => undefined);
    const pairs = page.rows.map((row): [string, string] => [row.name, row.value]);
    for (const [name] of pairs) seen.add(name);
    drift.push(
      ...(await reconcileChunk(ctx, { ...chunk, inflightApplied: page.inflightApplied }, pairs)),
    );
    page = await next;
  }
}

/** Compares the counters only Redis knows (never flushed: their base is 0). */
async function compareRedisOnlyCounters(
  ctx: EngineContext,
  chunk: ChunkContext,
  seen: ReadonlySet<string>,
): Promise<{ drift: Drift[]; checked: number }> {
  const { keys } = chunk;
  const redisOnly = new Set<string>();
  for (const name of await hashFields(ctx, keys.totals)) if (!seen.has(name)) redisOnly.add(name);
  for (const key of [keys.pending, keys.inflight]) {
    for (const field of await hashFields(ctx, key)) {
      const { counter } = parsePendingField(field);
      if (!seen.has(counter)) redisOnly.add(counter);
    }
  }
  const names = [...redisOnly];
  const drift: Drift[] = [];
  const chunkSize = ctx.config.reconcileChunkSize;
  for (let i = 0; i < names.length; i += chunkSize) {
    const pairs = names.slice(i, i + chunkSize).map((name): [string, string] => [name, '0']);
    drift.push(...(await reconcileChunk(ctx, chunk, pairs)));
  }
  return { drift, checked: names.length };
}

async function reconcileOnce(
  ctx: EngineContext,
  shard: number,
  keys: ShardKeys,
  options: ReconcileShardOptions,
  lockToken: string,
): Promise<ShardReconcileReport> {
  const epochMissing = (await ctx.redis.exists(keys.epoch)) === 0;
  // A refused batch may or may not be in PostgreSQL already: no expected total can be computed
  // (nor repaired) until an operator decides. A shard that lost its data is rebuilt regardless:
  // it must serve again, and the decision re-runs this reconcile.
  const refused = epochMissing ? undefined : await refusedInflightBatch(ctx, shard);
  if (refused !== undefined) {
    return {
      shard,
      countersChecked: 0,
      drift: [],
      repaired: false,
      redisLostData: false,
      lossesFoundAt: [],
      rewinds: [],
      refusedBatch: refused,
    };
  }
  const batchId = (await ctx.redis.hget(keys.inflightMeta, 'batch')) ?? '';
  const stored = await compareStoredCounters(ctx, shard, {
    keys,
    batchId,
    repair: options.repair,
    lockToken,
  });
  const redisOnly = await compareRedisOnlyCounters(
    ctx,
    {
      keys,
      batchId,
      inflightApplied: stored.inflightApplied,
      repair: options.repair,
      lockToken,
    },
    stored.seen,
  );
  const drift = [...stored.drift, ...redisOnly.drift];

  const redisLostData = epochMissing && options.storeWasSetUp;
  // Quota usages were summed from what Redis held, which a repair finds was wrong (or an
  // operator's discard took deltas from).
  if (options.repair) await dropQuotaUsage(ctx, shard);
  if (options.repair && epochMissing) {
    // Recorded before the marker is back: whoever rebuilds the shard, a later reconcile learns
    // of the loss (a crash in between leaves the marker missing, which reports it too).
    if (redisLostData) {
      await ctx.pool.query(reconcileSql.recordRedisLoss, [shard]).catch((error: unknown) => {
        throw postgresFailure(error, `recording that Redis lost shard ${shard}`);
      });
    }
    await ctx.redis.set(keys.epoch, new Date().toISOString());
  }
  return {
    shard,
    countersChecked: stored.seen.size + redisOnly.checked,
    drift,
    repaired: options.repair && (drift.length > 0 || epochMissing),
    redisLostData,
    lossesFoundAt: [],
    rewinds: [],
    refusedBatch: null,
  };
}
