/**
 * The flush worker (`tally worker`): keeps PostgreSQL current by flushing every shard on a
 * schedule. BullMQ holds one job scheduler per shard; any number of replicas share the jobs.
 * BullMQ runs a job at least once, so a job can run twice (a replica paused past its job lock);
 * the engine's shard lock and ledger make that harmless.
 */
import { performance } from 'node:perf_hooks';
import { Queue, Worker, type Job } from 'bullmq';
import type { Logger } from 'pino';
import { serviceDefaults, storeEnv, type StoreEnv } from '../process/env-config.js';
import { createTally, FlushError, TallyError, type Tally } from '../index.js';
import { logConnectionErrors } from '../redis/connection.js';
import { connectRedis, parseRedisUrl } from '../redis/redis-url.js';
import { createLogger } from '../process/logging.js';
import { FlushMetrics } from './flush-metrics.js';
import {
  flushQueueName,
  reviveStoppedSchedules,
  upsertScheduler,
  type FlushJobData,
} from './flush-schedules.js';
import { startMetricsServer, type MetricsServer } from './metrics-server.js';
import { closeInOrder, exitOnSignals, integerFromEnv } from '../process/lifecycle.js';
import {
  flushLockTtlDefaultMs,
  ledgerRetentionDefaultMs,
  ledgerRetentionMinMs,
  maxWindowMs,
} from '../config.js';

/** The longest delay Node's timers take (2^31 − 1 ms); past it they fire at once. */
const maxTimerMs = 2_147_483_647;

export interface FlushWorkerConfig extends StoreEnv {
  /** How often each shard is flushed. */
  flushIntervalMs: number;
  /** Flush jobs one replica runs at once. */
  concurrency: number;
  /** Port of /metrics and /healthz; 0 picks a free one; undefined serves none. */
  metricsPort: number | undefined;
  /** Address /metrics and /healthz listen on: loopback unless set (containers set 0.0.0.0). */
  metricsHost: string;
  /** How long a graceful shutdown may take before the process exits anyway (status 1). */
  shutdownTimeoutMs: number;
  /** BullMQ job lock: a replica silent this long loses its job to another (stalled job). */
  jobLockMs: number;
  /** The engine's shard lock TTL (see TallyOptions.flushLockTtlMs). */
  flushLockTtlMs: number;
  /** How long flush ledger rows are kept (see TallyOptions.ledgerRetentionMs). */
  ledgerRetentionMs: number;
  /** How often this replica prunes the ledger (one replica at a time does). */
  ledgerPruneIntervalMs: number;
  /** How often this replica maintains the bucket partitions (one replica at a time does). */
  bucketUpkeepIntervalMs: number;
}

/** The worker's configuration, from the environment; every default is set here. */
export function configFromEnv(env: NodeJS.ProcessEnv = process.env): FlushWorkerConfig {
  const flushIntervalMs = integerFromEnv(
    env,
    'TALLY_FLUSH_INTERVAL_MS',
    serviceDefaults.flushIntervalMs,
  );
  return {
    ...storeEnv(env),
    flushIntervalMs,
    concurrency: integerFromEnv(env, 'TALLY_WORKER_CONCURRENCY', serviceDefaults.workerConcurrency),
    metricsPort:
      env.TALLY_METRICS_PORT === undefined || env.TALLY_METRICS_PORT === ''
        ? undefined
        : integerFromEnv(env, 'TALLY_METRICS_PORT', 0, 0, 65_535),
    metricsHost: env.TALLY_METRICS_HOST ?? '127.0.0.1',
    shutdownTimeoutMs: integerFromEnv(
      env,
      'TALLY_SHUTDOWN_TIMEOUT_MS',
      serviceDefaults.shutdownTimeoutMs,
    ),
    jobLockMs: integerFromEnv(env, 'TALLY_JOB_LOCK_MS', serviceDefaults.jobLockMs),
    flushLockTtlMs: integerFromEnv(env, 'TALLY_FLUSH_LOCK_TTL_MS', flushLockTtlDefaultMs, 100),
    ledgerRetentionMs: integerFromEnv(
      env,
      'TALLY_LEDGER_RETENTION_MS',
      ledgerRetentionDefaultMs,
      ledgerRetentionMinMs,
      maxWindowMs,
    ),
    ledgerPruneIntervalMs: integerFromEnv(
      env,
      'TALLY_LEDGER_PRUNE_INTERVAL_MS',
      serviceDefaults.ledgerPruneIntervalMs,
      1_000,
      maxTimerMs,
    ),
    bucketUpkeepIntervalMs: integerFromEnv(
      env,
      'TALLY_BUCKET_UPKEEP_INTERVAL_MS',
      serviceDefaults.bucketUpkeepIntervalMs,
      1_000,
      maxTimerMs,
    ),
  };
}

export interface RunningFlushWorker {
  /** The port /metrics and /healthz listen on, when they do. */
  readonly metricsPort: number | undefined;
  /** Stops taking jobs, waits for the flushes in progress, closes every connection. */
  close(): Promise<void>;
}

/** One flush job: flushes its shard, records the outcome, rethrows failures for a retry. */
function flushJob(tally: Tally, metrics: FlushMetrics, logger: Logger) {
  // A refused batch fails every job of its shard until an operator decides: said once per
  // batch at warn, then at debug (the metric keeps counting).
  const refusalsSaid = new Map<number, string>();
  return async (job: Job<FlushJobData>) => {
    const { shard } = job.data;
    const started = performance.now();
    try {
      // Another replica already flushing this shard makes this run redundant, not late.
      const batches = await tally.flushShard(shard, { lockWaitMs: 0 });
      metrics.recordFlush(batches, (performance.now() - started) / 1_000);
      return { batches: batches.length };
    } catch (error) {
      if (error instanceof TallyError && error.code === 'BUSY') {
        metrics.recordSkipped();
        return { skipped: true };
      }
      const code = error instanceof TallyError ? error.code : 'UNEXPECTED';
      metrics.recordFailure(code);
      const batchId = error instanceof FlushError ? error.batchId : undefined;
      const repeated = code === 'BATCH_REFUSED' && refusalsSaid.get(shard) === batchId;
      if (code === 'BATCH_REFUSED' && batchId !== undefined) refusalsSaid.set(shard, batchId);
      logger[repeated ? 'debug' : 'warn'](
        {
          shard,
          batchId,
          attempt: job.attemptsMade + 1,
          cause: code,
          err: error,
        },
        'flush failed; it will be retried',
      );
      throw error;
    }
  };
}

/** How soon upkeep runs again while an upgraded store's bucket rows are still moving. */
const upkeepAgainMs = 1_000;

/**
 * Runs a maintenance task now and then every `intervalMs`, one run at a time; a run that
 * returns 'again' has work left and is followed after `upkeepAgainMs`. A failed run is logged
 * and the next one retries. Returns the function that stops it: it aborts the task's signal
 * and waits for the run in progress.
 */
function runPeriodically(
  task: (signal: AbortSignal) => Promise<'again' | undefined>,
  intervalMs: number,
  onError: (error: unknown) => void,
): () => Promise<void> {
  let running: Promise<void> | undefined;
  let timer: NodeJS.Timeout | undefined;
  const stopping = new AbortController();
  const schedule = (delayMs: number) => {
    if (stopping.signal.aborted) return;
    timer = setTimeout(run, delayMs);
    timer.unref();
  };
  const run = () => {
    running = task(stopping.signal)
      .catch((error: unknown) => {
        onError(error);
        return undefined;
      })
      .then((next) => {
        running = undefined;
        schedule(next === 'again' ? upkeepAgainMs : intervalMs);
      });
  };
  run();
  return async () => {
    stopping.abort();
    clearTimeout(timer);
    await running;
  };
}

/** Prunes the flush ledger (engine/ledger-pruning.ts). */
function pruneLedgerTask(tally: Tally, metrics: FlushMetrics, logger: Logger) {
  return async () => {
    const { deleted, busy } = await tally.pruneLedger();
    metrics.recordPruned(deleted);
    if (deleted > 0) logger.info({ deleted, busy }, 'flush ledger pruned');
    return undefined;
  };
}

/** Finishes counter deletions a process left running (engine/deletion.ts). */
function finishDeletionsTask(tally: Tally, logger: Logger) {
  return async () => {
    const finished = await tally.finishDeletions();
    if (finished > 0) logger.info({ finished }, 'counter deletions finished');
    return undefined;
  };
}

/** Upkeep of the bucket partitions (engine/bucket-upkeep.ts); at once again while moving. */
function bucketUpkeepTask(tally: Tally, metrics: FlushMetrics, logger: Logger) {
  return async (signal: AbortSignal) => {
    const report = await tally.maintainBuckets({ signal });
    metrics.recordBucketUpkeep(report);
    const { created, dropped, deferred, deleted, moved } = report;
    if (created + dropped + deferred + deleted + moved > 0 || report.moveFinished) {
      logger.info(report, 'bucket partitions maintained');
    }
    if (report.moveFinished) {
      logger.info(
        "the upgraded store's bucket rows are all in the partitions; its old table is dropped",
      );
    }
    return report.moving ? 'again' : undefined;
  };
}

export async function startFlushWorker(
  config: FlushWorkerConfig,
  logger: Logger = createLogger({ level: config.logLevel, format: config.logFormat }),
): Promise<RunningFlushWorker> {
  const tally: Tally = await createTally({
    redis: config.redisUrl,
    postgres: config.databaseUrl,
    shards: config.shards,
    keyPrefix: config.keyPrefix,
    buckets: config.buckets,
    retention: config.retention,
    redisLossAccepted: config.redisLossAccepted,
    durabilityCheckIntervalMs: config.durabilityCheckIntervalMs,
    minReplicas: config.minReplicas,
    replicaWaitTimeoutMs: config.replicaWaitTimeoutMs,
    flushLockTtlMs: config.flushLockTtlMs,
    ledgerRetentionMs: config.ledgerRetentionMs,
    logger,
  });
  // BullMQ's blocking commands need a connection that never gives up on a request.
  const connection = connectRedis(parseRedisUrl(config.redisUrl), { maxRetriesPerRequest: null });
  logConnectionErrors(connection, logger, 'redis (bullmq)');
  // One hash tag for every queue key, so the queue also runs on Redis Cluster.
  const prefix = `{${config.keyPrefix}:bull}`;
  const queue = new Queue(flushQueueName, { connection, prefix });
  queue.on('error', (error: Error) => {
    logger.warn({ err: error }, 'queue error');
  });
  for (let shard = 0; shard < config.shards; shard++) {
    await upsertScheduler(queue, config.flushIntervalMs, shard);
  }

  const metrics = new FlushMetrics(tally);
  const worker = new Worker<FlushJobData>(flushQueueName, flushJob(tally, metrics, logger), {
    connection,
    prefix,
    concurrency: config.concurrency,
    lockDuration: config.jobLockMs,
    stalledInterval: config.jobLockMs,
  });
  worker.on('error', (error: Error) => {
    logger.warn({ err: error }, 'worker error');
  });
  const stopReviving = reviveStoppedSchedules(queue, config, logger);
  const stopPruning = runPeriodically(
    pruneLedgerTask(tally, metrics, logger),
    config.ledgerPruneIntervalMs,
    (error) => {
      logger.warn({ err: error }, 'could not prune the flush ledger; the next run retries');
    },
  );
  const stopDeletions = runPeriodically(
    finishDeletionsTask(tally, logger),
    config.ledgerPruneIntervalMs,
    (error) => {
      logger.warn({ err: error }, 'could not finish a counter deletion; the next run retries');
    },
  );
  // At start, before flushes come to need this period's ranges; then on a schedule.
  const stopUpkeep = runPeriodically(
    bucketUpkeepTask(tally, metrics, logger),
    config.bucketUpkeepIntervalMs,
    (error) => {
      logger.warn({ err: error }, 'could not maintain the bucket partitions; the next run retries');
    },
  );
  const stopMaintenance = async () => {
    await Promise.all([stopPruning(), stopDeletions(), stopUpkeep()]);
  };
  const connections = [
    ['the flush jobs', () => worker.close()], // waits for the flushes in progress
    ['the queue', () => queue.close()],
    ['the engine', () => tally.close()],
    ['the queue connection', () => connection.quit()],
  ] as const;

  let server: MetricsServer | undefined;
  if (config.metricsPort !== undefined) {
    try {
      server = await startMetricsServer(
        metrics,
        { port: config.metricsPort, host: config.metricsHost },
        logger,
      );
    } catch (error) {
      stopReviving();
      await closeInOrder([['the maintenance', stopMaintenance], ...connections]);
      throw error;
    }
  }
  logger.info(
    {
      shards: config.shards,
      flushIntervalMs: config.flushIntervalMs,
      concurrency: config.concurrency,
      metricsPort: server?.port,
      redisDurability: tally.durability.lossBound,
    },
    'flush worker started',
  );

  return {
    metricsPort: server?.port,
    async close() {
      server?.markClosing();
      stopReviving();
      await closeInOrder([
        ['the maintenance', stopMaintenance],
        ...connections,
        ['the metrics server', () => server?.close()],
      ]);
      logger.info('flush worker stopped');
    },
  };
}

/**
 * `tally worker`: runs until SIGTERM or SIGINT, then stops taking jobs, finishes the flushes in
 * progress and exits 0; past `shutdownTimeoutMs`, or on a second signal, it exits 1 at once
 * (safe: a flush killed at any point is finished by the next one).
 */
export async function runFlushWorker(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const config = configFromEnv(env);
  const logger = createLogger({ level: config.logLevel, format: config.logFormat });
  const running = await startFlushWorker(config, logger);
  exitOnSignals(() => running.close(), { logger, timeoutMs: config.shutdownTimeoutMs });
}
