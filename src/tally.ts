import { once } from 'node:events';
import type pg from 'pg';
import {
  postgresConnectTimeoutFloorMs,
  resolveConfig,
  type ResolvedConfig,
  type TallyOptions,
} from './config.js';
import { isGranularity, type Granularity } from './counters/buckets.js';
import { openRedis, redisFailure } from './redis/connection.js';
import { openPostgres } from './store/pool.js';
import { reconcileSql, statusSql } from './store/sql.js';
import { canonicalName, type CounterRef } from './counters/counter-name.js';
import { inspectRedisDurability, type RedisDurability } from './redis/durability.js';
import { FlushError, TallyError, ValidationError } from './errors.js';
import { forEachLimited, SerialQueue } from './engine/concurrency.js';
import type { EngineContext } from './engine/engine-context.js';
import { flushShard, type AppliedBatch } from './engine/flusher.js';
import {
  resolveRefusedBatch,
  type RefusedBatchDecision,
  type ResolvedBatch,
} from './engine/refused-batches.js';
import { pruneLedger, type LedgerPruneReport } from './engine/ledger-pruning.js';
import { maintainBuckets, type BucketUpkeepReport } from './engine/bucket-upkeep.js';
import {
  IncrementPreparer,
  IncrementSender,
  type BatchIncrementResult,
  type IncrementOptions,
  type IncrementResult,
} from './engine/increments.js';
import { assertSchemaCurrent } from './store/migrator.js';
import { reconcileShard, type ShardReconcileReport } from './engine/reconciler.js';
import { QuotaSeeder } from './engine/quota-seeding.js';
import {
  deleteCounters,
  finishDeletions,
  type DeleteOptions,
  type DeletionResult,
  type DeletionTarget,
} from './engine/deletion.js';
import { defineScripts, ScriptStatus, type RedisConnection } from './redis/scripts.js';
import { shardOf } from './counters/sharding.js';
import { shardKeys } from './redis/shard-keys.js';
import {
  ensureStoreIdentity,
  markStoreSetUp,
  recordKeptGranularities,
  storeWasSetUp,
} from './store/settings.js';
import { readUsage, type UsageBucket, type UsageQuery } from './engine/usage.js';
import { queryUsage, streamUsage } from './engine/usage-query.js';
import type { UsagePage, UsageQueryInput, UsageRow } from './engine/query-spec.js';
import {
  labelValues,
  listCounters,
  type CounterListing,
  type LabelValues,
  type LabelValuesOptions,
  type ListCountersInput,
} from './engine/discovery.js';

export interface IncrementItem extends IncrementOptions {
  counter: CounterRef;
  by?: number;
}

const resolveDecisions: readonly RefusedBatchDecision[] = ['discard', 'apply'];

/** How many shards `reconcile` checks at once. */
const reconcileConcurrency = 4;

/** incr's default options: one shared object rather than a new `{}` per call. */
const noOptions: IncrementOptions = Object.freeze({});

export interface ShardStatus {
  shard: number;
  /**
   * Deltas waiting for the next flush: one per counter and smallest bucket (a counter counted
   * on both sides of an hour boundary since the last flush has two).
   */
  pendingDeltas: number;
  /**
   * The batch being flushed, if any, and its deltas (counted as pendingDeltas). `refused`: the
   * flushes refuse it (BATCH_REFUSED) until an operator settles it with `resolveRefusedBatch`.
   */
  inflightBatch: { batchId: string; deltas: number; refused: boolean } | null;
  /** Age of the oldest delta not yet in PostgreSQL (0 when there is none). */
  oldestUnflushedAgeMs: number;
  /** Redis holds this shard's totals (its epoch marker is present). */
  totalsValid: boolean;
  /** When PostgreSQL last applied a batch of this shard (null: never). */
  lastFlushAt: Date | null;
  /**
   * Times a process found this shard's Redis data gone and rebuilt it that no reconcile repair
   * has reported yet (`reconcile`'s `lossesFoundAt`); null while PostgreSQL cannot be read.
   */
  unreportedRedisLosses: number | null;
}

export interface TallyStatus {
  shards: ShardStatus[];
  redis: RedisDurability;
  /** The schema version PostgreSQL is migrated to; null while PostgreSQL cannot be read. */
  schemaVersion: number | null;
  /** The time buckets' state; null while PostgreSQL cannot be read. */
  buckets: {
    /** Per granularity, the instant before which the store holds no complete buckets. */
    prunedBefore: Partial<Record<Granularity, Date>>;
    /** An upgraded store's rows are still being moved into the partitions (schema 6). */
    moving: boolean;
  } | null;
}

export interface Tally {
  /** Adds `by` (default 1) to a counter in one round trip and returns its new total. */
  incr(counter: CounterRef, by?: number, options?: IncrementOptions): Promise<IncrementResult>;
  /**
   * Validates every item first (bad input changes nothing), then applies each one and reports
   * each one's result; an item that would overflow is reported, not thrown. A Redis failure
   * rejects the whole call, though items on other shards may have been applied: retry with the
   * same idempotency keys.
   */
  incrMany(items: readonly IncrementItem[]): Promise<BatchIncrementResult[]>;
  /** The counter's current total (PostgreSQL base + everything not yet flushed). */
  get(counter: CounterRef): Promise<number>;
  getMany(counters: readonly CounterRef[]): Promise<number[]>;
  /** Usage per bucket over flushed and not-yet-flushed deltas. */
  usage(counter: CounterRef, query: UsageQuery): Promise<UsageBucket[]>;
  /**
   * Usage of many counters: a base name's labelled counters filtered by `where` and grouped by
   * `groupBy` labels (or plain names by prefix), per calendar window of a time zone, exact over
   * flushed, pending and in-flight deltas. One page; `nextCursor` asks for the next.
   */
  query(query: UsageQueryInput): Promise<UsagePage>;
  /** Every row of a query from its cursor on, in group order, streamed (exports). */
  queryStream(query: UsageQueryInput): AsyncGenerator<UsageRow>;
  /** The counters of a base name (filtered by labels), or plain names by prefix. */
  listCounters(selection: ListCountersInput): Promise<CounterListing>;
  /** The values `label` takes among the counters of `counter` (a base name). */
  labelValues(counter: string, label: string, options?: LabelValuesOptions): Promise<LabelValues>;
  /**
   * Flushes every shard now, resuming batches left in flight; returns what it applied. A shard
   * whose in-flight batch is refused (BATCH_REFUSED) does not stop the others: once they are
   * flushed, one BATCH_REFUSED names every refused shard (`details`: `refused`, `applied`).
   */
  flush(): Promise<AppliedBatch[]>;
  /**
   * Flushes one shard (what the worker runs per job). Waits up to `lockWaitMs` (default: the
   * lock TTL) for another flush or reconcile of the shard to finish, then throws BUSY.
   */
  flushShard(shard: number, options?: { lockWaitMs?: number }): Promise<AppliedBatch[]>;
  /**
   * Checks every shard's (or one shard's) Redis totals against PostgreSQL; with `repair`,
   * rewrites them. `onShard` hears of each shard as it is done (progress). Reports the Redis
   * losses found since a repair last reported them, including those a running process found
   * and rebuilt by itself; a repair marks them reported.
   */
  reconcile(options?: {
    repair?: boolean;
    shard?: number;
    onShard?: (report: ShardReconcileReport) => void;
  }): Promise<ShardReconcileReport[]>;
  status(): Promise<TallyStatus>;
  /**
   * Deletes the flush ledger's rows older than `ledgerRetentionMs`, in bounded statements (the
   * worker runs it every minute); one process prunes at a time, the others find it busy.
   */
  pruneLedger(): Promise<LedgerPruneReport>;
  /**
   * Upkeep of the bucket partitions (the worker runs it on a schedule; a process that flushes
   * without the worker should too): creates the ranges flushes will write, drops those past
   * the retention, and moves an upgraded store's rows into the partitions. Bounded steps; one
   * process at a time, the others find it busy. `signal` stops it between steps.
   */
  maintainBuckets(options?: { signal?: AbortSignal }): Promise<BucketUpkeepReport>;
  /**
   * Deletes a counter (a name, or { name, labels }) or a selection of them ({ counter, where }:
   * a base name's labelled counters whose labels match; { prefix }: plain names). Once it
   * resolves, reads and queries give 0 for them, and no flush, retry or reconcile brings back
   * a delta counted before; an increment racing it is deleted with it or counted after it.
   * Recorded in tally.counter_deletions (`requestedBy`). `dryRun` lists what would go.
   */
  delete(target: DeletionTarget, options?: DeleteOptions): Promise<DeletionResult>;
  /**
   * Finishes deletions a process left running when it died (the worker runs it every
   * minute); how many it finished.
   */
  finishDeletions(): Promise<number>;
  /**
   * Settles a batch the flushes refuse (BATCH_REFUSED: it reappeared from before the pruned
   * part of the ledger, so it may have been applied already). `discard` drops it and rebuilds
   * the shard's Redis totals from PostgreSQL + pending (right when it had been applied);
   * `apply` applies it (right when it had not; it counts twice otherwise). `batchId` must be
   * the refused batch's, as `status()` shows it.
   */
  resolveRefusedBatch(
    shard: number,
    batchId: string,
    decision: RefusedBatchDecision,
  ): Promise<ResolvedBatch>;
  /**
   * Times this client could not renew a shard lock it held for a flush or reconcile (a Redis
   * error, or the lock expired while the process was paused): another process may have worked
   * on the shard beside it. Harmless for counts (the ledger), worth an alert if it repeats.
   */
  readonly lockRenewalFailures: number;
  /** The UTC granularities this client counts usage in (option buckets). */
  readonly buckets: readonly Granularity[];
  /** Whether Redis and PostgreSQL answer right now (for readiness probes). */
  ping(): Promise<{ redis: boolean; postgres: boolean }>;
  /**
   * What a readiness probe needs, cheaply: both servers answer, and how many shards have their
   * totals built (one EXISTS per shard; status() reads far more).
   */
  readiness(): Promise<{ redis: boolean; postgres: boolean; shardsBuilt: number; shards: number }>;
  /**
   * Redis' durability as last read (at start-up, on every reconnect and every
   * durabilityCheckIntervalMs), the loss bound that follows, and whether it is accepted.
   */
  readonly durability: RedisDurability;
  close(): Promise<void>;
}

class TallyClient implements Tally {
  private readonly sender: IncrementSender;
  private readonly preparer: IncrementPreparer;
  private readonly rebuilds = new Map<number, Promise<void>>();
  private closed = false;
  private durabilityTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly ctx: EngineContext,
    private readonly owns: { redis: boolean; pool: boolean },
    /**
     * The store was set up before (Redis held its totals once), so a missing epoch marker means
     * Redis lost its data. False only during the very first start-up of a store.
     */
    private setUp: boolean,
  ) {
    const rebuild = (shard: number) => this.rebuildShard(shard);
    this.sender = new IncrementSender(
      ctx.redis,
      ctx.scripts,
      ctx.config,
      rebuild,
      new QuotaSeeder(ctx, rebuild),
      (shard, callsLost) => {
        this.recordRewind(shard, callsLost);
      },
    );
    this.preparer = new IncrementPreparer(ctx.config);
  }

  /**
   * Reads Redis' durability again on every reconnect and every durabilityCheckIntervalMs: a
   * live `CONFIG SET`, or a failover to a differently configured server, shows in status,
   * readiness and metrics (it showed the start-up value for good).
   */
  watchDurability(): void {
    const check = () => {
      inspectRedisDurability(this.ctx.redis, this.config.redisLossAccepted).then(
        (durability) => {
          const before = this.ctx.durability;
          this.ctx.durability = durability;
          if (durability.problem !== null && durability.problem !== before.problem) {
            this.config.logger.error(
              { ...durability },
              `redis settings no longer accepted: ${durability.problem}`,
            );
          } else if (
            durability.lossBound !== before.lossBound ||
            durability.accepted !== before.accepted
          ) {
            this.config.logger.warn(
              { ...durability },
              `redis durability changed: ${durability.lossBound}`,
            );
          }
        },
        (error: unknown) => {
          this.config.logger.debug({ err: error }, 'could not read redis durability');
        },
      );
    };
    this.ctx.redis.on('ready', check);
    this.durabilityTimer = setInterval(check, this.config.durabilityCheckIntervalMs);
    this.durabilityTimer.unref();
  }

  /** Called once the first start-up of a store has built every shard. */
  markSetUp(): void {
    this.setUp = true;
  }

  get lockRenewalFailures(): number {
    return this.ctx.stats.lockRenewalFailures;
  }

  get buckets(): readonly Granularity[] {
    return this.config.buckets;
  }

  get durability(): RedisDurability {
    return this.ctx.durability;
  }

  private get config(): ResolvedConfig {
    return this.ctx.config;
  }

  private assertOpen(): void {
    if (this.closed) throw new TallyError('CLOSED', 'This Tally client was closed.');
  }

  /**
   * Records that a shard went back in time, for reconcile and status to report: its totals and
   * pending deltas lack increments it had applied (acknowledged, unless their reply was lost), which
   * no rebuild brings back.
   */
  private recordRewind(shard: number, callsLost: number): void {
    const { logger } = this.config;
    logger.error(
      { shard, callsLost },
      `Redis shard ${shard} went back in time (a failover to a replica that was behind, or an ` +
        `AOF restart): at least ${callsLost} increment calls it had applied are gone from it; ` +
        'tally reconcile reports it',
    );
    this.ctx.pool.query(reconcileSql.recordRewind, [shard, callsLost]).catch((error: unknown) => {
      logger.error({ err: error, shard, callsLost }, 'could not record the rewind in PostgreSQL');
    });
  }

  /**
   * Rebuilds a shard whose Redis totals lack the PostgreSQL base (Redis lost its data), once per
   * process however many callers notice at the same moment.
   */
  rebuildShard(shard: number): Promise<void> {
    let rebuild = this.rebuilds.get(shard);
    if (rebuild === undefined) {
      rebuild = reconcileShard(this.ctx, shard, {
        repair: true,
        storeWasSetUp: this.setUp,
        reportRecordedLosses: false,
      })
        .then((report) => {
          const details = { shard, redisLostData: report.redisLostData };
          if (report.redisLostData) {
            this.config.logger.warn(
              details,
              'Redis lost this shard: totals rebuilt from PostgreSQL; increments not yet ' +
                'flushed before the loss are gone',
            );
          } else this.config.logger.info(details, 'built shard totals from PostgreSQL');
        })
        .finally(() => this.rebuilds.delete(shard));
      this.rebuilds.set(shard, rebuild);
    }
    return rebuild;
  }

  // Not `async`: on the hot path the extra promise an async wrapper adds is measurable. Errors
  // still reach the caller as a rejected promise, never as a throw.
  incr(
    counter: CounterRef,
    by = 1,
    options: IncrementOptions = noOptions,
  ): Promise<IncrementResult> {
    try {
      this.assertOpen();
      return this.sender.send(this.preparer.prepare(counter, by, options));
    } catch (error) {
      // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors -- assertOpen and prepare throw TallyErrors only
      return Promise.reject(error);
    }
  }

  async incrMany(items: readonly IncrementItem[]): Promise<BatchIncrementResult[]> {
    this.assertOpen();
    if (!Array.isArray(items)) throw new ValidationError('incrMany takes an array of increments.');
    const prepared = items.map((item: IncrementItem, index) => {
      try {
        return this.preparer.prepare(item.counter, item.by ?? 1, item);
      } catch (error) {
        if (!(error instanceof ValidationError)) throw error;
        throw new ValidationError(`Item ${index}: ${error.message}`, {
          cause: error,
          details: { index },
        });
      }
    });
    return this.sender.sendMany(prepared);
  }

  async get(counter: CounterRef): Promise<number> {
    const [value] = await this.getMany([counter]);
    return value ?? 0;
  }

  async getMany(counters: readonly CounterRef[]): Promise<number[]> {
    this.assertOpen();
    const names = counters.map((counter) => canonicalName(counter));
    const byShard = new Map<number, number[]>();
    names.forEach((name, index) => {
      const shard = shardOf(name, this.config.shards);
      const indexes = byShard.get(shard);
      if (indexes === undefined) byShard.set(shard, [index]);
      else indexes.push(index);
    });
    const values = new Array<number>(names.length).fill(0);
    await Promise.all(
      [...byShard].map(async ([shard, indexes]) => {
        const keys = shardKeys(this.config.keyPrefix, shard);
        const shardNames = indexes.map((index) => names[index] as string);
        for (let rebuilt = false; ; rebuilt = true) {
          let reply: (string | number)[];
          try {
            reply = await this.ctx.scripts.readTotals(keys, shardNames);
          } catch (error) {
            throw redisFailure(error, 'read', 'a read of counter totals');
          }
          if (reply[0] === ScriptStatus.ok) {
            indexes.forEach((index, i) => (values[index] = Number(reply[i + 1])));
            return;
          }
          // Never answer with totals that lack the PostgreSQL base: rebuild them first.
          if (rebuilt) throw new TallyError('UNAVAILABLE', `Shard ${shard} could not be rebuilt.`);
          await this.rebuildShard(shard);
        }
      }),
    );
    return values;
  }

  usage(counter: CounterRef, query: UsageQuery): Promise<UsageBucket[]> {
    this.assertOpen();
    return readUsage(this.ctx, counter, query);
  }

  query(query: UsageQueryInput): Promise<UsagePage> {
    this.assertOpen();
    return queryUsage(this.ctx, query);
  }

  queryStream(query: UsageQueryInput): AsyncGenerator<UsageRow> {
    this.assertOpen();
    return streamUsage(this.ctx, query);
  }

  listCounters(selection: ListCountersInput): Promise<CounterListing> {
    this.assertOpen();
    return listCounters(this.ctx, selection);
  }

  labelValues(counter: string, label: string, options?: LabelValuesOptions): Promise<LabelValues> {
    this.assertOpen();
    return labelValues(this.ctx, counter, label, options);
  }

  async flush(): Promise<AppliedBatch[]> {
    this.assertOpen();
    const applied: AppliedBatch[] = [];
    // Two shards at a time, their transactions one at a time: while PostgreSQL applies one
    // shard's batch, the next is snapshotted, read and turned into rows (at 10k counters those
    // Redis steps were a fifth of the flush, docs/benchmarks.md). PostgreSQL sees what a
    // one-by-one flush gives it, one transaction at a time.
    const postgresQueue = new SerialQueue();
    const shards = Array.from({ length: this.config.shards }, (_, shard) => shard);
    // A refused batch stops its own shard until an operator decides, not the others.
    const refused: FlushError[] = [];
    await forEachLimited(shards, 2, async (shard) => {
      try {
        applied.push(...(await flushShard(this.ctx, shard, { postgresQueue })));
      } catch (error) {
        if (!(error instanceof FlushError && error.code === 'BATCH_REFUSED')) throw error;
        refused.push(error);
      }
    });
    // Stable: a shard's resumed batch stays before the one snapshotted after it.
    applied.sort((a, b) => a.shard - b.shard);
    if (refused.length > 0) {
      refused.sort((a, b) => a.shard - b.shard);
      throw new TallyError(
        'BATCH_REFUSED',
        `Every shard was flushed but ${refused.map((error) => error.shard).join(', ')}, whose ` +
          'in-flight batches the ledger refuses: ' +
          refused.map((error) => error.message).join(' '),
        {
          details: { refused: refused.map(({ shard, batchId }) => ({ shard, batchId })), applied },
        },
      );
    }
    return applied;
  }

  async flushShard(shard: number, options: { lockWaitMs?: number } = {}): Promise<AppliedBatch[]> {
    this.assertOpen();
    return flushShard(this.ctx, this.validShard(shard), options);
  }

  async reconcile(
    options: {
      repair?: boolean;
      shard?: number;
      onShard?: (report: ShardReconcileReport) => void;
    } = {},
  ): Promise<ShardReconcileReport[]> {
    this.assertOpen();
    const shards =
      options.shard === undefined
        ? Array.from({ length: this.config.shards }, (_, shard) => shard)
        : [this.validShard(options.shard)];
    const reports: ShardReconcileReport[] = [];
    // Several shards at once: one shard waits in turn on PostgreSQL, Node and Redis, and
    // several overlap those waits (1M counters: 9.1 s one by one, docs/benchmarks.md).
    await forEachLimited(shards, reconcileConcurrency, async (shard) => {
      const report = await reconcileShard(this.ctx, shard, {
        repair: options.repair ?? false,
        storeWasSetUp: this.setUp,
        reportRecordedLosses: true,
      });
      options.onShard?.(report);
      reports.push(report);
    });
    return reports.sort((a, b) => a.shard - b.shard);
  }

  async pruneLedger(): Promise<LedgerPruneReport> {
    this.assertOpen();
    return pruneLedger(this.ctx, this.config.ledgerRetentionMs);
  }

  async maintainBuckets(options: { signal?: AbortSignal } = {}): Promise<BucketUpkeepReport> {
    this.assertOpen();
    return maintainBuckets(this.ctx, options);
  }

  async delete(target: DeletionTarget, options?: DeleteOptions): Promise<DeletionResult> {
    this.assertOpen();
    return deleteCounters(this.ctx, target, options);
  }

  async finishDeletions(): Promise<number> {
    this.assertOpen();
    return finishDeletions(this.ctx);
  }

  async resolveRefusedBatch(
    shard: number,
    batchId: string,
    decision: RefusedBatchDecision,
  ): Promise<ResolvedBatch> {
    this.assertOpen();
    // Not only for TypeScript callers: a plain-JS typo must not discard a batch.
    if (!(resolveDecisions as readonly string[]).includes(decision)) {
      throw new ValidationError(
        `The decision must be discard or apply, got ${JSON.stringify(decision)}.`,
      );
    }
    return resolveRefusedBatch(this.ctx, this.validShard(shard), batchId, decision, this.setUp);
  }

  private validShard(shard: number): number {
    if (!Number.isInteger(shard) || shard < 0 || shard >= this.config.shards) {
      throw new ValidationError(
        `Shard must be a whole number from 0 to ${this.config.shards - 1}, got ${shard}.`,
      );
    }
    return shard;
  }

  async status(): Promise<TallyStatus> {
    this.assertOpen();
    const { redis, pool } = this.ctx;
    const nowMs = Date.now();
    // The status must still show the lag when PostgreSQL is down: its part is then unknown.
    const postgresPart = await Promise.all([
      pool.query<{ shard: number; at: Date | null }>(statusSql.lastFlushPerShard, [
        this.config.shards,
      ]),
      pool.query<{ version: number }>(statusSql.schemaVersion),
      pool.query<{ shard: number; losses: number }>(statusSql.unreportedLossesPerShard),
      pool.query<{ horizons: Record<string, string>; moving: boolean }>(statusSql.buckets),
    ]).catch(() => undefined);
    const lastFlush = new Map(
      postgresPart?.[0].rows.flatMap((row) => (row.at === null ? [] : [[row.shard, row.at]])),
    );
    const unreported = new Map(postgresPart?.[2].rows.map((row) => [row.shard, row.losses]));
    const shards = await Promise.all(
      Array.from({ length: this.config.shards }, async (_, shard): Promise<ShardStatus> => {
        const keys = shardKeys(this.config.keyPrefix, shard);
        const [pendingDeltas, pendingSince, meta, inflightDeltas, epoch] = await Promise.all([
          redis.hlen(keys.pending),
          redis.get(keys.pendingSince),
          redis.hgetall(keys.inflightMeta),
          redis.hlen(keys.inflight),
          redis.exists(keys.epoch),
        ]);
        const oldest = Math.min(
          pendingSince === null ? nowMs : Number(pendingSince),
          meta.since === undefined ? nowMs : Number(meta.since),
        );
        return {
          shard,
          pendingDeltas,
          inflightBatch:
            meta.batch === undefined
              ? null
              : {
                  batchId: meta.batch,
                  deltas: inflightDeltas,
                  refused: meta.refused !== undefined,
                },
          oldestUnflushedAgeMs: Math.max(0, nowMs - oldest),
          totalsValid: epoch === 1,
          lastFlushAt: lastFlush.get(shard) ?? null,
          unreportedRedisLosses: postgresPart === undefined ? null : (unreported.get(shard) ?? 0),
        };
      }),
    );
    return {
      shards,
      redis: this.ctx.durability,
      schemaVersion: postgresPart?.[1].rows[0]?.version ?? null,
      buckets: bucketStatus(postgresPart?.[3].rows[0]),
    };
  }

  async readiness(): Promise<{
    redis: boolean;
    postgres: boolean;
    shardsBuilt: number;
    shards: number;
  }> {
    const { shards, keyPrefix } = this.config;
    const [connections, built] = await Promise.all([
      this.ping(),
      Promise.all(
        Array.from({ length: shards }, (_, shard) =>
          this.ctx.redis.exists(shardKeys(keyPrefix, shard).epoch),
        ),
      ).catch(() => []),
    ]);
    return { ...connections, shardsBuilt: built.filter((found) => found === 1).length, shards };
  }

  async ping(): Promise<{ redis: boolean; postgres: boolean }> {
    const [redis, postgres] = await Promise.all([
      this.ctx.redis.ping().then(
        () => true,
        () => false,
      ),
      this.ctx.pool.query('SELECT 1').then(
        () => true,
        () => false,
      ),
    ]);
    return { redis, postgres };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.durabilityTimer);
    if (this.owns.redis) {
      await this.ctx.redis.quit().catch(() => {
        this.ctx.redis.disconnect();
      });
    }
    if (this.owns.pool) await this.ctx.pool.end();
  }
}

/** Replies of a Redis that refused the credentials: retrying will not change its mind. */
const refusedCredentials = /^(WRONGPASS|NOAUTH|NOPERM)\b|invalid password/i;

/**
 * Waits for the first connection. Refused credentials end the wait at once (ioredis would retry
 * them forever); an unreachable Redis is retried by ioredis as usual, and reported.
 */
async function waitUntilReady(redis: RedisConnection): Promise<void> {
  if (redis.status === 'ready') return;
  let onError: ((error: Error) => void) | undefined;
  try {
    await Promise.race([
      once(redis, 'ready'),
      once(redis, 'end').then(() => {
        throw new TallyError('UNAVAILABLE', 'Could not connect to Redis (REDIS_URL).');
      }),
      new Promise<never>((_resolve, reject) => {
        onError = (error: Error) => {
          if (refusedCredentials.test(error.message)) {
            reject(
              new TallyError(
                'CONFIGURATION',
                `Redis refused the credentials of REDIS_URL: ${error.message}`,
                { cause: error },
              ),
            );
          }
        };
        redis.on('error', onError);
      }),
    ]);
  } finally {
    if (onError !== undefined) redis.off('error', onError);
  }
}

/**
 * The start-up error for a failed call to one of the two servers, naming which: a bare
 * `connect ECONNREFUSED 127.0.0.1:1` does not say whether REDIS_URL or DATABASE_URL is wrong.
 */
function unreachable(server: 'Redis' | 'PostgreSQL') {
  return (error: unknown): never => {
    if (error instanceof TallyError) throw error;
    const variable = server === 'Redis' ? 'REDIS_URL' : 'DATABASE_URL';
    throw new TallyError(
      'UNAVAILABLE',
      `${server} (${variable}) could not be reached: ${(error as Error).message}`,
      { cause: error },
    );
  };
}

/** The status' bucket part from its row (undefined: PostgreSQL could not be read). */
function bucketStatus(
  row: { horizons: Record<string, string>; moving: boolean } | undefined,
): TallyStatus['buckets'] {
  if (row === undefined) return null;
  const prunedBefore: Partial<Record<Granularity, Date>> = {};
  for (const [granularity, at] of Object.entries(row.horizons)) {
    if (isGranularity(granularity)) prunedBefore[granularity] = new Date(at);
  }
  return { prunedBefore, moving: row.moving };
}

/**
 * Connects, checks the store and returns a client. Start-up checks: the schema is current, the
 * shard count and key prefix match the store's, Redis' durability is stated (and refused unless
 * redisLossAccepted allows it), and every shard whose Redis totals lack the PostgreSQL base is
 * rebuilt.
 */
export async function createTally(options: TallyOptions): Promise<Tally> {
  const config = resolveConfig(options);
  const redis = openRedis(options.redis, config.redisCommandTimeoutMs, config.logger);
  const pool: pg.Pool = openPostgres(
    options.postgres,
    Math.max(config.queryTimeoutMs, postgresConnectTimeoutFloorMs),
    config.logger,
  );
  const owns = { redis: true, pool: typeof options.postgres === 'string' };
  try {
    await waitUntilReady(redis).catch(unreachable('Redis'));
    await assertSchemaCurrent(pool).catch(unreachable('PostgreSQL'));
    await ensureStoreIdentity(pool, config).catch(unreachable('PostgreSQL'));
    const added = config.rebuildAtStart
      ? await recordKeptGranularities(pool, config.buckets).catch(unreachable('PostgreSQL'))
      : [];
    if (added.length > 0) {
      config.logger.warn(
        { added },
        'granularities kept from now on: reads of earlier periods from them are refused',
      );
    }
    const durability = await inspectRedisDurability(redis, config.redisLossAccepted).catch(
      unreachable('Redis'),
    );
    if (durability.problem !== null) {
      // The least that accepts it: eviction needs 'any', a bounded loss 'bounded'.
      const needed = durability.maxmemoryPolicy === 'noeviction' ? 'bounded' : 'any';
      throw new TallyError(
        'NOT_DURABLE',
        `Refusing this Redis: ${durability.problem}. To accept the risk instead, set ` +
          `TALLY_ACCEPT_REDIS_LOSS=${needed} (tally serve, tally worker) or redisLossAccepted: ` +
          `'${needed}' (the library); it is '${config.redisLossAccepted}'.`,
      );
    }
    config.logger.info(
      { lossBound: durability.lossBound, redisVersion: durability.redisVersion },
      `redis durability: ${durability.lossBound}`,
    );
    const ctx: EngineContext = {
      redis,
      scripts: defineScripts(redis),
      pool,
      config,
      durability,
      stats: { lockRenewalFailures: 0 },
    };
    const setUp = await storeWasSetUp(pool);
    const client = new TallyClient(ctx, owns, setUp);
    for (let shard = 0; config.rebuildAtStart && shard < config.shards; shard++) {
      if ((await redis.exists(shardKeys(config.keyPrefix, shard).epoch)) === 0) {
        await client.rebuildShard(shard);
      }
    }
    if (!setUp && config.rebuildAtStart) {
      await markStoreSetUp(pool);
      client.markSetUp();
    }
    client.watchDurability();
    return client;
  } catch (error) {
    redis.disconnect();
    if (owns.pool) await pool.end().catch(() => undefined);
    throw error;
  }
}
