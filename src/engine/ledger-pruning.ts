import type pg from 'pg';
import { TallyError } from '../errors.js';
import { postgresFailure } from '../store/pool.js';
import { deletionSql, pruneSql } from '../store/sql.js';
import { inTransaction, withClient } from '../store/transaction.js';
import { shardKeys } from '../redis/shard-keys.js';
import type { EngineContext } from './engine-context.js';

/**
 * How far Redis' clock (snapshot times) and PostgreSQL's (applied_at) may disagree. The
 * horizon rule below holds while they disagree by less; the retention must be at least three
 * times it (config.ts), so that a batch snapshotted now is never taken for an old one.
 */
export const ledgerClockMarginMs = 3_600_000;

/** Rows one statement deletes: a short transaction, a bounded amount of WAL. */
const rowsPerStatement = 5_000;
/** Statements per shard per run: a backlog (a first run over months of ledger) drains over runs. */
const statementsPerShard = 20;

/**
 * The shard's in-flight batch when the flushes refuse it: marked refused by a flush, or not yet
 * flushed since it came back but meeting the horizon all the same. Undefined otherwise.
 */
export async function refusedInflightBatch(
  ctx: EngineContext,
  shard: number,
): Promise<string | undefined> {
  const keys = shardKeys(ctx.config.keyPrefix, shard);
  const [batch, refused, snapshot] = await ctx.redis.hmget(
    keys.inflightMeta,
    'batch',
    'refused',
    'snapshot',
  );
  if (batch === null) return undefined;
  if (refused !== null) return batch;
  const { rows } = await ctx.pool
    .query<{ refused: boolean }>(pruneSql.batchRefused, [
      shard,
      batch,
      Number(snapshot ?? 0),
      ledgerClockMarginMs,
    ])
    .catch((error: unknown) => {
      throw postgresFailure(error, `the ledger's horizon of shard ${shard}`);
    });
  return rows[0]?.refused === true ? batch : undefined;
}

export interface LedgerPruneReport {
  /** Ledger rows deleted. */
  deleted: number;
  /** Another process held the pruning lock: this run pruned nothing. */
  busy: boolean;
}

/**
 * Deletes ledger rows applied more than `retentionMs` ago, shard by shard, in bounded
 * statements. A deleted row can no longer stop its batch from being applied twice, so each
 * delete first moves the shard's horizon (tally.ledger_horizons) up to its cutoff, in the same
 * transaction; a flush refuses a batch snapshotted before the horizon whose row it does not find
 * (flushSql.claimBatch). The cutoff never passes the shard's in-flight batch (its snapshot time
 * less the clock margin), and that batch's row is never deleted: the batch still to be applied
 * or acknowledged is never refused. Only a batch that reappears from the past (a Redis restored
 * from an old backup) can meet the horizon. Each shard keeps its newest row (its last flush).
 * One process prunes at a time (a session lock for the run), and none while the two servers'
 * clocks disagree by more than half the margin.
 */
export async function pruneLedger(
  ctx: EngineContext,
  retentionMs: number,
): Promise<LedgerPruneReport> {
  return withClient(ctx.pool, async (client) => {
    const lock = await client.query<{ locked: boolean }>(pruneSql.tryLock);
    if (lock.rows[0]?.locked !== true) return { deleted: 0, busy: true };
    try {
      await assertClocksAgree(ctx, client);
      // Before the ledger rows they are matched by go: a batch in the ledger is never applied
      // again, so its tombstones (engine/deletion.ts) have done their work.
      await client.query(deletionSql.pruneTombstones);
      const { rows } = await client.query<{ shard: number }>(pruneSql.shardsWithOldRows, [
        ctx.config.shards,
        retentionMs,
      ]);
      let deleted = 0;
      for (const { shard } of rows) deleted += await pruneShard(ctx, client, shard, retentionMs);
      return { deleted, busy: false };
    } finally {
      await client.query(pruneSql.unlock);
    }
  });
}

/**
 * The horizon rule holds while Redis' clock (snapshot times) and PostgreSQL's (applied_at)
 * agree within the margin: refuse to prune, loudly, when they do not come close.
 */
async function assertClocksAgree(ctx: EngineContext, client: pg.ClientBase): Promise<void> {
  const [time, postgres] = await Promise.all([
    ctx.redis.time(),
    client.query<{ ms: string }>(pruneSql.clockMs),
  ]);
  // Typed as numbers, sent as strings: converted either way.
  const [seconds = 0, micros = 0] = time.map(Number);
  const redisMs = seconds * 1_000 + Math.floor(micros / 1_000);
  const skewMs = Math.abs(redisMs - Number(postgres.rows[0]?.ms));
  if (skewMs > ledgerClockMarginMs / 2) {
    throw new TallyError(
      'CONFIGURATION',
      `Redis' clock and PostgreSQL's differ by ${Math.round(skewMs / 1_000)} s, more than ` +
        `${ledgerClockMarginMs / 2_000} s: pruning the flush ledger would not be safe, so it ` +
        "stopped. Synchronise the two servers' clocks (NTP).",
    );
  }
}

/** Up to `statementsPerShard` bounded deletes of one shard, each in its own transaction. */
async function pruneShard(
  ctx: EngineContext,
  client: pg.ClientBase,
  shard: number,
  retentionMs: number,
): Promise<number> {
  const keys = shardKeys(ctx.config.keyPrefix, shard);
  let deleted = 0;
  for (let statement = 0; statement < statementsPerShard; statement++) {
    const rows = await inTransaction(client, async () => {
      // Read in the transaction that deletes: a batch snapshotted after this read is new.
      const [batch, snapshot] = await ctx.redis.hmget(keys.inflightMeta, 'batch', 'snapshot');
      const keepFrom = batch === null ? null : Number(snapshot ?? 0) - ledgerClockMarginMs;
      const horizon = await client.query<{ pruned_before: Date }>(pruneSql.advanceHorizon, [
        shard,
        retentionMs,
        keepFrom,
      ]);
      const { rowCount } = await client.query(pruneSql.deleteBefore, [
        shard,
        horizon.rows[0]?.pruned_before,
        rowsPerStatement,
        batch,
      ]);
      return rowCount ?? 0;
    });
    deleted += rows;
    if (rows < rowsPerStatement) break;
  }
  return deleted;
}
