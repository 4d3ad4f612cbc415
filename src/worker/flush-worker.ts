/**
 * The flush worker (`tally worker`): keeps PostgreSQL current by flushing every shard on a
 * schedule. BullMQ holds one job scheduler per shard; any number of replicas share the jobs.
 * BullMQ runs a job at least once, so a job can run twice (a replica paused past its job lock);
 * the engine's shard lock and ledger make that harmless.
 */
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import { performance } from 'node:perf_hooks';
import { Queue, Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { storeEnv, type StoreEnv } from '../process/env-config.js';
import { createTally, FlushError, TallyError, type Tally } from '../index.js';
import { logConnectionErrors } from '../redis/connection.js';
import { createLogger } from '../process/logging.js';
import { FlushMetrics } from './flush-metrics.js';
import { exitOnSignals, integerFromEnv } from '../process/lifecycle.js';
import { ledgerRetentionDefaultMs } from '../config.js';

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
}

/** The worker's configuration, from the environment; every default is set here. */
export function configFromEnv(env: NodeJS.ProcessEnv = process.env): FlushWorkerConfig {
  const flushIntervalMs = integerFromEnv(env, 'TALLY_FLUSH_INTERVAL_MS', 1_000);
  return {
    ...storeEnv(env),
    flushIntervalMs,
    concurrency: integerFromEnv(env, 'TALLY_WORKER_CONCURRENCY', 4),
    metricsPort:
      env.TALLY_METRICS_PORT === undefined || env.TALLY_METRICS_PORT === ''
        ? undefined
        : integerFromEnv(env, 'TALLY_METRICS_PORT', 0, 0, 65_535),
    metricsHost: env.TALLY_METRICS_HOST ?? '127.0.0.1',
    shutdownTimeoutMs: integerFromEnv(env, 'TALLY_SHUTDOWN_TIMEOUT_MS', 30_000),
    jobLockMs: integerFromEnv(env, 'TALLY_JOB_LOCK_MS', 30_000),
    flushLockTtlMs: integerFromEnv(env, 'TALLY_FLUSH_LOCK_TTL_MS', 30_000, 100),
    ledgerRetentionMs: integerFromEnv(env, 'TALLY_LEDGER_RETENTION_MS', ledgerRetentionDefaultMs),
    ledgerPruneIntervalMs: integerFromEnv(env, 'TALLY_LEDGER_PRUNE_INTERVAL_MS', 60_000, 1_000),
  };
}

export interface RunningFlushWorker {
  /** The port /metrics and /healthz listen on, when they do. */
  readonly metricsPort: number | undefined;
  /** Stops taking jobs, waits for the flushes in progress, closes every connection. */
  close(): Promise<void>;
}

const queueName = 'flush';
const schedulerId = (shard: number) => `flush-shard-${shard}`;

interface FlushJobData {
  shard: number;
}

/** Creates or updates a shard's scheduler (and its next job); safe from every replica. */
function upsertScheduler(queue: Queue, config: FlushWorkerConfig, shard: number) {
  return queue.upsertJobScheduler(
    schedulerId(shard),
    { every: config.flushIntervalMs },
    {
      name: 'flush-shard',
      data: { shard } satisfies FlushJobData,
      opts: {
        attempts: 4,
        backoff: { type: 'exponential', delay: config.flushIntervalMs, jitter: 0.5 },
        removeOnComplete: true,
        removeOnFail: { count: 1_000 },
      },
    },
  );
}

/** How often the schedulers are checked: about 3 round trips per shard each time. */
const schedulerCheckIntervalMs = (flushIntervalMs: number) =>
  Math.min(Math.max(flushIntervalMs, 1_000), 10_000);

/** States in which a scheduler's next job will still run. */
const liveStates = new Set(['delayed', 'waiting', 'prioritized', 'active', 'waiting-children']);

/**
 * The shards whose flushes would never run again: no scheduler, or a scheduler whose next job
 * is gone (BullMQ creates the next job only when the current one starts, so once an evicted or
 * deleted job breaks the chain the scheduler stays and nothing runs, with no log line). A job id
 * of a scheduler is `repeat:<scheduler id>:<next run, ms>` (BullMQ 6).
 */
async function stoppedShards(queue: Queue, shards: number): Promise<number[]> {
  const checks = Array.from({ length: shards }, async (_, shard) => {
    const scheduler = await queue.getJobScheduler(schedulerId(shard));
    if (scheduler?.next === undefined) return shard;
    const jobId = `repeat:${schedulerId(shard)}:${scheduler.next}`;
    const [job, state] = await Promise.all([queue.getJob(jobId), queue.getJobState(jobId)]);
    return job !== undefined && liveStates.has(state) ? undefined : shard;
  });
  return (await Promise.all(checks)).filter((shard) => shard !== undefined);
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
    redisLossAccepted: config.redisLossAccepted,
    durabilityCheckIntervalMs: config.durabilityCheckIntervalMs,
    flushLockTtlMs: config.flushLockTtlMs,
    ledgerRetentionMs: config.ledgerRetentionMs,
    logger,
  });
  // BullMQ's blocking commands need a connection that never gives up on a request.
  const connection = new Redis(config.redisUrl, { maxRetriesPerRequest: null });
  logConnectionErrors(connection, logger, 'redis (bullmq)');
  // One hash tag for every queue key, so the queue also runs on Redis Cluster.
  const prefix = `{${config.keyPrefix}:bull}`;
  const queue = new Queue(queueName, { connection, prefix });
  queue.on('error', (error: Error) => {
    logger.warn({ err: error }, 'queue error');
  });
  for (let shard = 0; shard < config.shards; shard++) await upsertScheduler(queue, config, shard);

  const metrics = new FlushMetrics(tally);
  const worker = new Worker<FlushJobData>(
    queueName,
    async (job: Job<FlushJobData>) => {
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
        logger.warn(
          {
            shard,
            batchId: error instanceof FlushError ? error.batchId : undefined,
            attempt: job.attemptsMade + 1,
            cause: code,
            err: error,
          },
          'flush failed; it will be retried',
        );
        throw error;
      }
    },
    {
      connection,
      prefix,
      concurrency: config.concurrency,
      lockDuration: config.jobLockMs,
      stalledInterval: config.jobLockMs,
    },
  );
  worker.on('error', (error: Error) => {
    logger.warn({ err: error }, 'worker error');
  });

  // Redis lost its data, or evicted or deleted job keys, while we run: a shard whose scheduler
  // or next job is gone would never be flushed again. Put them back.
  const watch = setInterval(() => {
    stoppedShards(queue, config.shards)
      .then(async (stopped) => {
        if (stopped.length === 0) return;
        logger.warn({ shards: stopped }, 'flush jobs missing; re-creating their schedulers');
        for (const shard of stopped) await upsertScheduler(queue, config, shard);
      })
      .catch((error: unknown) => {
        logger.warn({ err: error }, 'could not check the flush schedulers');
      });
  }, schedulerCheckIntervalMs(config.flushIntervalMs));
  watch.unref();

  // The ledger's old rows, a bounded number of statements a run (engine/ledger-pruning.ts).
  let pruning: Promise<void> | undefined;
  const prune = setInterval(() => {
    pruning ??= tally
      .pruneLedger()
      .then(({ deleted, busy }) => {
        metrics.recordPruned(deleted);
        if (deleted > 0) logger.info({ deleted, busy }, 'flush ledger pruned');
      })
      .catch((error: unknown) => {
        logger.warn({ err: error }, 'could not prune the flush ledger; the next run retries');
      })
      .finally(() => (pruning = undefined));
  }, config.ledgerPruneIntervalMs);
  prune.unref();

  let closing = false;
  const server: Server | undefined =
    config.metricsPort === undefined
      ? undefined
      : createServer((request, response) => {
          if (request.url === '/healthz') {
            response.writeHead(closing ? 503 : 200, { 'content-type': 'text/plain' });
            response.end(closing ? 'shutting down\n' : 'ok\n');
            return;
          }
          if (request.url === '/metrics') {
            metrics.render().then(
              ({ contentType, body }) => {
                response.writeHead(200, { 'content-type': contentType });
                response.end(body);
              },
              (error: unknown) => {
                logger.warn({ err: error }, 'metrics collection failed');
                response.writeHead(500).end();
              },
            );
            return;
          }
          response.writeHead(404).end();
        });
  let metricsPort: number | undefined;
  if (server !== undefined) {
    server.listen(config.metricsPort, config.metricsHost);
    try {
      await Promise.race([
        once(server, 'listening'),
        once(server, 'error').then(([error]) => {
          throw error;
        }),
      ]);
    } catch (error) {
      await Promise.all([worker.close(), queue.close()]);
      await tally.close();
      await connection.quit();
      throw new TallyError(
        'CONFIGURATION',
        `Cannot serve metrics on TALLY_METRICS_HOST ${config.metricsHost} TALLY_METRICS_PORT ` +
          `${config.metricsPort}: ${(error as Error).message}.`,
        { cause: error },
      );
    }
    const address = server.address();
    metricsPort = typeof address === 'object' && address !== null ? address.port : undefined;
  }
  logger.info(
    {
      shards: config.shards,
      flushIntervalMs: config.flushIntervalMs,
      concurrency: config.concurrency,
      metricsPort,
      redisDurability: tally.durability.lossBound,
    },
    'flush worker started',
  );

  return {
    metricsPort,
    async close() {
      closing = true;
      clearInterval(watch);
      clearInterval(prune);
      await pruning;
      await worker.close(); // waits for the flushes in progress
      await queue.close();
      await tally.close();
      await connection.quit();
      if (server !== undefined) {
        server.close();
        server.closeAllConnections();
      }
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
