import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { AppliedBatch, BucketUpkeepReport, Tally } from '../index.js';
import { sharedFor } from '../engine/concurrency.js';
import { registerDurabilityGauge } from '../redis/durability-metric.js';

/**
 * The worker's Prometheus metrics. Gauges of pending work are read from Redis at scrape time,
 * so they hold for the whole store whichever replica is scraped.
 */
export class FlushMetrics {
  readonly registry = new Registry();
  private readonly duration = new Histogram({
    name: 'tally_flush_duration_seconds',
    help: 'Time one shard flush took (snapshot, PostgreSQL transaction, acknowledge).',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  private readonly batches = new Counter({
    name: 'tally_flush_batches_total',
    help: 'Batches applied to PostgreSQL.',
    registers: [this.registry],
  });
  private readonly counters = new Counter({
    name: 'tally_flush_counters_total',
    help: 'Counter totals changed in PostgreSQL (one per counter per batch).',
    registers: [this.registry],
  });
  private readonly skipped = new Counter({
    name: 'tally_flush_skipped_total',
    help: 'Flush jobs skipped because another process was flushing the shard.',
    registers: [this.registry],
  });
  private readonly failures = new Counter({
    name: 'tally_flush_failures_total',
    help: 'Failed flushes, by cause (TallyError code).',
    labelNames: ['cause'],
    registers: [this.registry],
  });

  private readonly pending = new Gauge({
    name: 'tally_pending_deltas',
    help: 'Deltas waiting for the next flush, per shard (one per counter and smallest bucket).',
    labelNames: ['shard'],
    registers: [this.registry],
  });
  private readonly lag = new Gauge({
    name: 'tally_flush_lag_seconds',
    help: 'Age of the oldest delta not yet in PostgreSQL, per shard.',
    labelNames: ['shard'],
    registers: [this.registry],
  });
  private readonly redisLosses = new Gauge({
    name: 'tally_redis_losses_unreported',
    help: 'Times Redis was found to have lost a shard (rebuilt since) that no reconcile --repair has reported yet, per shard.',
    labelNames: ['shard'],
    registers: [this.registry],
  });
  private readonly pruned = new Counter({
    name: 'tally_ledger_pruned_rows_total',
    help: 'Flush ledger rows this replica deleted (older than TALLY_LEDGER_RETENTION_MS).',
    registers: [this.registry],
  });
  private readonly partitionsCreated = new Counter({
    name: 'tally_bucket_partitions_created_total',
    help: 'Bucket range partitions this replica created ahead of the flushes.',
    registers: [this.registry],
  });
  private readonly partitionsDropped = new Counter({
    name: 'tally_bucket_partitions_dropped_total',
    help: 'Bucket range partitions this replica dropped, wholly past their retention (TALLY_RETENTION).',
    registers: [this.registry],
  });
  private readonly partitionsDeferred = new Counter({
    name: 'tally_bucket_partitions_deferred_total',
    help: 'Partition creates and drops this replica put off: their lock was not free within the lock timeout.',
    registers: [this.registry],
  });
  private readonly bucketRowsPruned = new Counter({
    name: 'tally_bucket_rows_pruned_total',
    help: 'Bucket rows past the retention this replica deleted one by one (from default partitions, or while moving an upgraded store).',
    registers: [this.registry],
  });
  private readonly bucketRowsMoved = new Counter({
    name: 'tally_bucket_rows_moved_total',
    help: "Rows of an upgraded store's unpartitioned bucket table this replica moved into the partitions.",
    registers: [this.registry],
  });
  private readonly refused = new Gauge({
    name: 'tally_refused_batches',
    help: 'In-flight batches the flushes refuse (BATCH_REFUSED, older than the pruned ledger), per shard: flushing of the shard is stopped until an operator resolves it.',
    labelNames: ['shard'],
    registers: [this.registry],
  });
  private readonly inflight = new Gauge({
    name: 'tally_inflight_batches',
    help: 'Batches snapshotted but not yet acknowledged (a flush running, or one that died).',
    registers: [this.registry],
  });

  /** One status read a second at most, however often (and by how many) it is scraped. */
  private readonly status: () => ReturnType<Tally['status']>;

  constructor(tally: Tally) {
    registerDurabilityGauge(this.registry, () => tally.durability);
    let counted = 0;
    new Counter({
      name: 'tally_flush_lock_renewal_failures_total',
      help: 'Times this replica could not renew a shard lock it held (Redis error, or lost while paused).',
      registers: [this.registry],
      collect() {
        this.inc(tally.lockRenewalFailures - counted);
        counted = tally.lockRenewalFailures;
      },
    });
    this.status = sharedFor(1_000, () => tally.status());
  }

  recordFlush(applied: readonly AppliedBatch[], seconds: number): void {
    this.duration.observe(seconds);
    this.batches.inc(applied.length);
    this.counters.inc(applied.reduce((sum, batch) => sum + batch.counters, 0));
  }

  recordPruned(rows: number): void {
    this.pruned.inc(rows);
  }

  recordBucketUpkeep(report: BucketUpkeepReport): void {
    this.partitionsCreated.inc(report.created);
    this.partitionsDropped.inc(report.dropped);
    this.partitionsDeferred.inc(report.deferred);
    this.bucketRowsPruned.inc(report.deleted);
    this.bucketRowsMoved.inc(report.moved);
  }

  recordSkipped(): void {
    this.skipped.inc();
  }

  recordFailure(cause: string): void {
    this.failures.inc({ cause });
  }

  /** Reads the pending work from Redis into the gauges, then renders every metric. */
  async render(): Promise<{ contentType: string; body: string }> {
    const status = await this.status();
    this.inflight.set(status.shards.filter((shard) => shard.inflightBatch !== null).length);
    for (const shard of status.shards) {
      this.pending.set({ shard: String(shard.shard) }, shard.pendingDeltas);
      this.lag.set({ shard: String(shard.shard) }, shard.oldestUnflushedAgeMs / 1_000);
      this.refused.set({ shard: String(shard.shard) }, shard.inflightBatch?.refused ? 1 : 0);
      // Unknown while PostgreSQL is down: the last value read stands.
      if (shard.unreportedRedisLosses !== null) {
        this.redisLosses.set({ shard: String(shard.shard) }, shard.unreportedRedisLosses);
      }
    }
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
