import { pruneSql } from '../store/sql.js';
import { withTransaction } from '../store/transaction.js';
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
 * from an old backup) can meet the horizon.
 */
export async function pruneLedger(
  ctx: EngineContext,
  retentionMs: number,
): Promise<LedgerPruneReport> {
  let deleted = 0;
  for (let shard = 0; shard < ctx.config.shards; shard++) {
    const keys = shardKeys(ctx.config.keyPrefix, shard);
    for (let statement = 0; statement < statementsPerShard; statement++) {
      const rows = await withTransaction(ctx.pool, async (client) => {
        const lock = await client.query<{ locked: boolean }>(pruneSql.tryLock);
        if (lock.rows[0]?.locked !== true) return undefined;
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
      if (rows === undefined) return { deleted, busy: true };
      deleted += rows;
      if (rows < rowsPerStatement) break;
    }
  }
  return { deleted, busy: false };
}
