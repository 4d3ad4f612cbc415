/**
 * Upkeep of the bucket partitions (store/partition-layout.ts): creates the ranges flushes will
 * write to before they do, drops those wholly past their granularity's retention, clears the
 * default partitions of rows past it, and moves a pre-partitioning store's rows over. Every
 * step is a short transaction; a DDL statement waits briefly for its lock (flushes queue behind
 * a waiting one), retries, and is left for the next run if it never gets it. One process runs
 * upkeep at a time (a session lock for the run); the worker runs it on a schedule.
 */
import { setTimeout } from 'node:timers/promises';
import type pg from 'pg';
import { granularities, type Granularity } from '../counters/buckets.js';
import { oldestKeptBucketMs } from '../counters/retention.js';
import {
  defaultPartitionTable,
  granularityTable,
  parsePartitionTable,
  partitionRange,
  partitionRanges,
  type PartitionRange,
} from '../store/partition-layout.js';
import { postgresFailure } from '../store/pool.js';
import { bucketSql } from '../store/sql.js';
import { inTransaction, withClient } from '../store/transaction.js';
import type { EngineContext } from './engine-context.js';

/**
 * How a DDL statement waits for its lock: each attempt gives up after `lockTimeoutMs`, and is
 * tried again after a pause, up to `attempts` times; then it is left for the next run.
 *
 * A detach takes its granularity's table exclusively, and an attach its default partition,
 * which every flush writing that granularity holds (flushSql.holdDefaultPartitions). Either
 * waits for the flushes in progress, and flushes arriving meanwhile wait behind it: with a
 * 1 s timeout, each of 28 drops (a first run over a month of minute ranges) held the next
 * flush up to a flush transaction's length, and the flush lag p99 rose 1.5×
 * (bench/retention.ts). With 50 ms the statement takes its lock in a gap between flushes or
 * gives up at once, costing a flush 50 ms at most.
 */
const lockWait = { lockTimeoutMs: 50, attempts: 40 } as const;
/** The pause between attempts: random, so that it does not fall into step with the flushes. */
const retryPauseMs = () => 50 + Math.random() * 200;
/**
 * The most ranges of one granularity the upkeep keeps writable, the newest: minute buckets
 * kept forever with ten years of backdating would be 3,650 partitions (a minute to create, and
 * every statement planning over them). An increment dated before them lands in the default
 * partition: kept and read, pruned row by row.
 */
const maxRangesAhead = 64;
/** Rows one delete or move statement touches: a short transaction, bounded WAL. */
const rowsPerStatement = 5_000;
/** How long one run moves pre-partitioning rows; the worker runs again at once while some remain. */
const moveBudgetMs = 10_000;

export interface BucketUpkeepReport {
  /** Range partitions created. */
  created: number;
  /** Range partitions dropped: wholly past their granularity's retention. */
  dropped: number;
  /** Partition creates and drops that never got their lock: left for the next run. */
  deferred: number;
  /** Bucket rows past the retention deleted (from default partitions, or while moving). */
  deleted: number;
  /** Pre-partitioning rows moved into the partitions. */
  moved: number;
  /** Pre-partitioning rows are left to move: run again soon. */
  moving: boolean;
  /** This run moved the last pre-partitioning rows and dropped their table. */
  moveFinished: boolean;
  /** Another process held the upkeep lock: this run did nothing. */
  busy: boolean;
}

/** A lock wait given up (lock_timeout): the statement is retried by the next run. */
const isLockTimeout = (error: unknown) =>
  typeof error === 'object' && error !== null && (error as { code?: unknown }).code === '55P03';

export async function maintainBuckets(
  ctx: EngineContext,
  options: { signal?: AbortSignal } = {},
): Promise<BucketUpkeepReport> {
  const report: BucketUpkeepReport = {
    created: 0,
    dropped: 0,
    deferred: 0,
    deleted: 0,
    moved: 0,
    moving: false,
    moveFinished: false,
    busy: false,
  };
  try {
    await withClient(ctx.pool, async (client) => {
      const lock = await client.query<{ locked: boolean }>(bucketSql.tryLock);
      if (lock.rows[0]?.locked !== true) {
        report.busy = true;
        return;
      }
      try {
        const upkeep = new Upkeep(ctx, client, Date.now(), report, options.signal);
        await upkeep.run();
      } finally {
        await client.query(bucketSql.unlock);
      }
    });
  } catch (error) {
    throw postgresFailure(error, 'the upkeep of the bucket partitions');
  }
  return report;
}

/** A bucket row's key: name, granularity, bucket_start as PostgreSQL writes it. */
type BucketKey = [string, string, string];

/** The next batch of rows to move: its last key, each granularity's first and last bucket. */
interface NextBatchRow {
  last: BucketKey | null;
  spans: [Granularity, string, string][] | null;
}

class Upkeep {
  /** Attached range partitions by table name. */
  private readonly attached = new Set<string>();

  constructor(
    private readonly ctx: EngineContext,
    private readonly client: pg.ClientBase,
    private readonly nowMs: number,
    private readonly report: BucketUpkeepReport,
    /** Aborted: the process is stopping; what is left waits for the next run. */
    private readonly signal: AbortSignal | undefined,
  ) {}

  async run(): Promise<void> {
    // Independent steps: one that keeps failing (a table of someone else's in the way of a
    // range) must not stop the others, run after run. The first failure is thrown at the end.
    // None starts once the process is stopping.
    const failures: unknown[] = [];
    const step = async (work: () => Promise<unknown>) => {
      if (this.signal?.aborted === true) return;
      await work().catch((error: unknown) => failures.push(error));
    };
    const [tables, horizons] = await Promise.all([
      this.client.query<{ table: string; attached: boolean }>(bucketSql.partitionTables),
      this.client.query<{ granularity: string; ms: string }>(bucketSql.horizons),
    ]);
    const prunedBefore = new Map(horizons.rows.map((row) => [row.granularity, Number(row.ms)]));
    for (const { table, attached } of tables.rows) {
      const range = parsePartitionTable(table);
      if (range === undefined) continue;
      if (attached) this.attached.add(table);
      // Detached by a run that stopped before dropping it: the horizon, moved in the detach's
      // transaction, covers it. A table of the same name it does not cover is someone else's.
      else if ((prunedBefore.get(range.granularity) ?? -Infinity) >= range.endMs) {
        await step(() => this.ddl((client) => client.query(bucketSql.drop(table))));
      }
    }
    for (const granularity of granularities) {
      await step(() => this.dropPastRetention(granularity));
      await step(() => this.deleteFromDefault(granularity));
    }
    for (const granularity of this.ctx.config.buckets) {
      for (const range of this.writableRanges(granularity)) await step(() => this.create(range));
    }
    await step(() =>
      this.moveUnpartitioned().catch((error: unknown) => {
        this.report.moving = true; // the old table is still there: again soon
        throw error;
      }),
    );
    if (failures.length > 0) throw failures[0];
  }

  /** Where the granularity's oldest kept bucket starts now; undefined when it keeps forever. */
  private cutoffMs(granularity: Granularity): number | undefined {
    return oldestKeptBucketMs(this.ctx.config.retention, granularity, this.nowMs);
  }

  /**
   * The ranges flushes may write: from the oldest bucket an increment may be dated in (kept by
   * the retention) to the newest, plus the whole next range, so that no write waits for a run
   * at a range's end; the newest `maxRangesAhead` of them at most.
   */
  private writableRanges(granularity: Granularity): PartitionRange[] {
    const { maxBackdateMs, maxFutureMs } = this.ctx.config;
    const cutoff = this.cutoffMs(granularity);
    const fromMs = Math.max(this.nowMs - maxBackdateMs, cutoff ?? -Infinity);
    const toMs = partitionRange(granularity, this.nowMs + maxFutureMs).endMs;
    return partitionRanges(granularity, fromMs, toMs).slice(-maxRangesAhead);
  }

  /** Where the oldest of the newest `maxRangesAhead` ranges (the next one counted) starts. */
  private oldestRangeMs(granularity: Granularity): number {
    let range = partitionRange(granularity, this.nowMs + this.ctx.config.maxFutureMs);
    for (let n = 0; n < maxRangesAhead - 1; n++)
      range = partitionRange(granularity, range.startMs - 1);
    return range.startMs;
  }

  /**
   * Creates a range partition unless it exists: an empty table, given the rows the default
   * partition took for its range meanwhile, then attached, the default partition held from the
   * start (flushes of the granularity wait meanwhile). False when its lock never came free.
   */
  private async create(range: PartitionRange): Promise<boolean> {
    if (this.attached.has(range.table)) return true;
    const created = await this.ddl(async (client) => {
      await client.query(bucketSql.lockDefault(defaultPartitionTable(range.granularity)));
      await client.query(bucketSql.createTable(range.table));
      await client.query(
        bucketSql.takeFromDefault(defaultPartitionTable(range.granularity), range.table),
        [range.startMs, range.endMs],
      );
      await client.query(
        bucketSql.attach(
          granularityTable(range.granularity),
          range.table,
          range.startMs,
          range.endMs,
        ),
      );
    });
    if (!created) return false;
    this.attached.add(range.table);
    this.report.created++;
    return true;
  }

  /**
   * Drops the granularity's range partitions that end at or before its cutoff. The horizon
   * moves first, in the transaction that detaches, so no read is ever answered from a range
   * that is gone.
   */
  private async dropPastRetention(granularity: Granularity): Promise<void> {
    const cutoff = this.cutoffMs(granularity);
    if (cutoff === undefined) return;
    const past = [...this.attached]
      .map((table) => parsePartitionTable(table))
      .filter(
        (range): range is PartitionRange =>
          range?.granularity === granularity && range.endMs <= cutoff,
      )
      .sort((a, b) => a.startMs - b.startMs);
    for (const [i, range] of past.entries()) {
      const detached = await this.ddl(async (client) => {
        await client.query(bucketSql.advanceHorizon, [granularity, range.endMs]);
        await client.query(bucketSql.detach(granularityTable(granularity), range.table));
      });
      if (!detached) {
        // What holds the table holds it for the others too: they wait for the next run.
        this.report.deferred += past.length - i - 1;
        return;
      }
      this.attached.delete(range.table);
      // Left detached when its lock never comes free: the next run drops it (the horizon
      // covers it).
      if (await this.ddl((client) => client.query(bucketSql.drop(range.table)))) {
        this.report.dropped++;
      }
    }
  }

  /** Deletes, in bounded statements, the default partition's rows from before the cutoff. */
  private async deleteFromDefault(granularity: Granularity): Promise<void> {
    const cutoff = this.cutoffMs(granularity);
    if (cutoff === undefined) return;
    while (this.signal?.aborted !== true) {
      // The horizon moves in the transaction that deletes, so no read sees the one without
      // the other; not at all when nothing goes.
      const deleted = await inTransaction(this.client, async (client) => {
        const result = await client.query(
          bucketSql.deleteFromDefault(defaultPartitionTable(granularity)),
          [cutoff, rowsPerStatement],
        );
        const rows = result.rowCount ?? 0;
        if (rows > 0) await client.query(bucketSql.advanceHorizon, [granularity, cutoff]);
        return rows;
      });
      this.report.deleted += deleted;
      if (deleted < rowsPerStatement) return;
    }
  }

  /**
   * Moves the pre-partitioning table's rows over in key order, batch by batch, for up to
   * `moveBudgetMs`; each batch's ranges are created first, so no row lands in a default
   * partition. When the table is empty, reads leave it and it is dropped.
   */
  private async moveUnpartitioned(): Promise<void> {
    const exists = await this.client.query<{ exists: boolean }>(bucketSql.unpartitionedExists);
    if (exists.rows[0]?.exists !== true) return;
    const cutoffs = Object.fromEntries(
      granularities.flatMap((granularity) => {
        const cutoff = this.cutoffMs(granularity);
        return cutoff === undefined ? [] : [[granularity, cutoff]];
      }),
    );
    const deadline = performance.now() + moveBudgetMs;
    let after: BucketKey | [null, null, null] = [null, null, null];
    while (performance.now() < deadline && this.signal?.aborted !== true) {
      const batch: pg.QueryResult<NextBatchRow> = await this.client.query<NextBatchRow>(
        bucketSql.nextUnpartitionedBatch,
        [...after, rowsPerStatement],
      );
      const next = batch.rows[0];
      const last: BucketKey | null = next?.last ?? null;
      if (last === null) {
        const finished = await this.ddl(async (client) => {
          for (const statement of bucketSql.finishMove) await client.query(statement);
        });
        this.report.moving = !finished;
        this.report.moveFinished = finished;
        return;
      }
      for (const [granularity, firstMs, lastMs] of next?.spans ?? []) {
        // Rows older than the newest `maxRangesAhead` ranges go to the default partition.
        const oldestMade = this.oldestRangeMs(granularity);
        const fromMs = Math.max(Number(firstMs), cutoffs[granularity] ?? -Infinity, oldestMade);
        if (fromMs > Number(lastMs)) continue;
        for (const range of partitionRanges(granularity, fromMs, Number(lastMs))) {
          // Moved without its range, the rows would stay in the default partition: the
          // writable window, all later runs create, may not reach back to them.
          if (!(await this.create(range))) {
            this.report.moving = true;
            return;
          }
        }
      }
      const counts = await inTransaction(this.client, async (client) => {
        const { rows } = await client.query<{ moved: number; pruned: Record<string, number> }>(
          bucketSql.moveUnpartitioned,
          [...after, ...last, JSON.stringify(cutoffs)],
        );
        const pruned = rows[0]?.pruned ?? {};
        // In the transaction that deletes them, as everywhere.
        for (const granularity of Object.keys(pruned)) {
          await client.query(bucketSql.advanceHorizon, [granularity, cutoffs[granularity]]);
        }
        const deleted = Object.values(pruned).reduce((sum, n) => sum + n, 0);
        return { moved: rows[0]?.moved ?? 0, deleted };
      });
      this.report.moved += counts.moved;
      this.report.deleted += counts.deleted;
      after = last;
    }
    this.report.moving = true;
  }

  /** Runs DDL in a transaction under the lock wait; false when every attempt gave up. */
  private async ddl(work: (client: pg.ClientBase) => Promise<unknown>): Promise<boolean> {
    for (let attempt = 1; ; attempt++) {
      try {
        await inTransaction(this.client, async (client) => {
          await client.query(bucketSql.lockTimeout(lockWait.lockTimeoutMs));
          await work(client);
        });
        return true;
      } catch (error) {
        if (!isLockTimeout(error)) throw error;
        // Stopping: not deferred, only left, as every step after it.
        if (this.signal?.aborted === true) return false;
        if (attempt === lockWait.attempts) break;
        await setTimeout(retryPauseMs());
      }
    }
    this.report.deferred++;
    return false;
  }
}
