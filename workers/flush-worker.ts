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
import { pino, type Logger } from 'pino';
import { createTally, FlushError, TallyError, type Tally } from '../src/index.js';
import { FlushMetrics } from './flush-metrics.js';
import { exitOnSignals, integerFromEnv, requiredEnv } from '../src/process-lifecycle.js';

export interface FlushWorkerConfig {
  redisUrl: string;
  databaseUrl: string;
  shards: number;
  keyPrefix: string;
  /** How often each shard is flushed. */
  flushIntervalMs: number;
  /** Flush jobs one replica runs at once. */
  concurrency: number;
  /** Port of /metrics and /healthz; 0 picks a free one; undefined serves none. */
  metricsPort: number | undefined;
  /** How long a graceful shutdown may take before the process exits anyway (status 1). */
  shutdownTimeoutMs: number;
  /** BullMQ job lock: a replica silent this long loses its job to another (stalled job). */
  jobLockMs: number;
  /** The engine's shard lock TTL (see TallyOptions.flushLockTtlMs). */
  flushLockTtlMs: number;
  logLevel: string;
}

/** The worker's configuration, from the environment; every default is set here. */
export function configFromEnv(env: NodeJS.ProcessEnv = process.env): FlushWorkerConfig {
  const flushIntervalMs = integerFromEnv(env, 'TALLY_FLUSH_INTERVAL_MS', 1_000);
  return {
    redisUrl: requiredEnv(env, 'REDIS_URL'),
    databaseUrl: requiredEnv(env, 'DATABASE_URL'),
    shards: integerFromEnv(env, 'TALLY_SHARDS', 16),
    keyPrefix: env.TALLY_KEY_PREFIX ?? 'tally',
    flushIntervalMs,
    concurrency: integerFromEnv(env, 'TALLY_WORKER_CONCURRENCY', 4),
    metricsPort:
      env.TALLY_METRICS_PORT === undefined || env.TALLY_METRICS_PORT === ''
        ? undefined
        : integerFromEnv(env, 'TALLY_METRICS_PORT', 0, 0),
    shutdownTimeoutMs: integerFromEnv(env, 'TALLY_SHUTDOWN_TIMEOUT_MS', 30_000),
    jobLockMs: integerFromEnv(env, 'TALLY_JOB_LOCK_MS', 30_000),
    flushLockTtlMs: integerFromEnv(env, 'TALLY_FLUSH_LOCK_TTL_MS', 30_000, 100),
    logLevel: env.TALLY_LOG_LEVEL ?? 'info',
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

/** Creates or updates one scheduler per shard; safe to run from every replica at every start. */
async function upsertSchedulers(queue: Queue, config: FlushWorkerConfig): Promise<void> {
  for (let shard = 0; shard < config.shards; shard++) {
    await queue.upsertJobScheduler(
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
}

export async function startFlushWorker(
  config: FlushWorkerConfig,
  logger: Logger = pino({ level: config.logLevel }),
): Promise<RunningFlushWorker> {
  const tally: Tally = await createTally({
    redis: config.redisUrl,
    postgres: config.databaseUrl,
    shards: config.shards,
    keyPrefix: config.keyPrefix,
    flushLockTtlMs: config.flushLockTtlMs,
    logger,
  });
  // BullMQ's blocking commands need a connection that never gives up on a request.
  const connection = new Redis(config.redisUrl, { maxRetriesPerRequest: null });
  connection.on('error', (error: Error) => {
    logger.warn({ err: error }, 'redis connection error (bullmq)');
  });
  // One hash tag for every queue key, so the queue also runs on Redis Cluster.
  const prefix = `{${config.keyPrefix}:bull}`;
  const queue = new Queue(queueName, { connection, prefix });
  queue.on('error', (error: Error) => {
    logger.warn({ err: error }, 'queue error');
  });
  await upsertSchedulers(queue, config);

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

  // Redis lost its data while we run: the schedulers went with it. Put them back.
  const watch = setInterval(() => {
    queue
      .getJobSchedulersCount()
      .then(async (count) => {
        if (count >= config.shards) return;
        logger.warn(
          { found: count, shards: config.shards },
          'flush schedulers missing; re-creating',
        );
        await upsertSchedulers(queue, config);
      })
      .catch((error: unknown) => {
        logger.warn({ err: error }, 'could not check the flush schedulers');
      });
  }, config.flushIntervalMs);
  watch.unref();

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
    server.listen(config.metricsPort, '0.0.0.0');
    await once(server, 'listening');
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
  const logger = pino({ level: config.logLevel });
  const running = await startFlushWorker(config, logger);
  exitOnSignals(() => running.close(), { logger, timeoutMs: config.shutdownTimeoutMs });
}
