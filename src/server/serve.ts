import {
  idempotencyWindowDefaultMs,
  incrementTimeoutDefaultMs,
  maxBackdateDefaultMs,
  maxFutureDefaultMs,
  maxFutureLimitMs,
  maxWindowMs,
  queryTimeoutDefaultMs,
  redisCommandTimeoutDefaultMs,
} from '../config.js';
import { serviceDefaults, storeEnv, type StoreEnv } from '../process/env-config.js';
import { TallyError, ValidationError } from '../errors.js';
import { createLogger } from '../process/logging.js';
import { createTally } from '../tally.js';
import { closeInOrder, exitOnSignals, integerFromEnv } from '../process/lifecycle.js';
import { buildApi, httpDefaults } from './api.js';
import { parseTokens } from './auth.js';
import { maxBatchDefault } from './schemas.js';

export interface ServeConfig extends StoreEnv {
  port: number;
  host: string;
  tokens: string[];
  bodyLimitBytes: number;
  maxBatch: number;
  /** How long an idempotency key is remembered: longer than any client keeps retrying. */
  idempotencyWindowMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  /** Usage queries, exports and listings running at once. */
  maxConcurrentQueries: number;
  /** Longest statement of a usage query or listing. */
  queryTimeoutMs: number;
  /** A Redis reply later than this fails the call (OUTCOME_UNKNOWN for an increment). */
  redisCommandTimeoutMs: number;
  /** Longest time Tally spends on one increment, its retries after lost replies included. */
  incrementTimeoutMs: number;
  /** How far before / after now an increment's `at` may lie. */
  maxBackdateMs: number;
  maxFutureMs: number;
  shutdownTimeoutMs: number;
}

/** Addresses only this machine reaches. */
function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/**
 * An API on an address other machines reach, without tokens, is refused unless asked for in
 * so many words: anyone who reaches it could count for any customer.
 */
function checkExposure(config: ServeConfig, env: NodeJS.ProcessEnv): ServeConfig {
  const allowed = env.TALLY_ALLOW_UNAUTHENTICATED;
  if (allowed !== undefined && allowed !== '' && allowed !== 'yes') {
    throw new ValidationError(
      `TALLY_ALLOW_UNAUTHENTICATED must be yes or unset, got ${JSON.stringify(allowed)}.`,
    );
  }
  if (config.tokens.length === 0 && !isLoopback(config.host) && allowed !== 'yes') {
    throw new ValidationError(
      `HOST ${config.host} can be reached from other machines and TALLY_API_TOKEN is not set: ` +
        'set it (16+ characters), or TALLY_ALLOW_UNAUTHENTICATED=yes to serve without authentication.',
    );
  }
  return config;
}

/** `tally serve` configuration, from the environment; every default is set here. */
export function serveConfigFromEnv(env: NodeJS.ProcessEnv = process.env): ServeConfig {
  return checkExposure(serveConfig(env), env);
}

function serveConfig(env: NodeJS.ProcessEnv): ServeConfig {
  return {
    ...storeEnv(env),
    port: integerFromEnv(env, 'PORT', 8080, 0, 65_535),
    host: env.HOST ?? '127.0.0.1',
    tokens: parseTokens(env.TALLY_API_TOKEN),
    bodyLimitBytes: integerFromEnv(env, 'TALLY_BODY_LIMIT_BYTES', httpDefaults.bodyLimitBytes, 1),
    maxBatch: integerFromEnv(env, 'TALLY_MAX_BATCH', maxBatchDefault, 1, 100_000),
    idempotencyWindowMs: integerFromEnv(
      env,
      'TALLY_IDEMPOTENCY_WINDOW_MS',
      idempotencyWindowDefaultMs,
      1,
    ),
    requestTimeoutMs: integerFromEnv(
      env,
      'TALLY_REQUEST_TIMEOUT_MS',
      httpDefaults.requestTimeoutMs,
      100,
    ),
    keepAliveTimeoutMs: integerFromEnv(
      env,
      'TALLY_KEEP_ALIVE_TIMEOUT_MS',
      httpDefaults.keepAliveTimeoutMs,
      1,
    ),
    maxConcurrentQueries: integerFromEnv(
      env,
      'TALLY_MAX_CONCURRENT_QUERIES',
      httpDefaults.maxConcurrentQueries,
      1,
      1_000,
    ),
    queryTimeoutMs: integerFromEnv(
      env,
      'TALLY_QUERY_TIMEOUT_MS',
      queryTimeoutDefaultMs,
      100,
      3_600_000,
    ),
    redisCommandTimeoutMs: integerFromEnv(
      env,
      'TALLY_REDIS_TIMEOUT_MS',
      redisCommandTimeoutDefaultMs,
      1,
    ),
    incrementTimeoutMs: integerFromEnv(
      env,
      'TALLY_INCREMENT_TIMEOUT_MS',
      incrementTimeoutDefaultMs,
      1,
    ),
    maxBackdateMs: integerFromEnv(
      env,
      'TALLY_MAX_BACKDATE_MS',
      maxBackdateDefaultMs,
      0,
      maxWindowMs,
    ),
    maxFutureMs: integerFromEnv(
      env,
      'TALLY_MAX_FUTURE_MS',
      maxFutureDefaultMs,
      0,
      maxFutureLimitMs,
    ),
    shutdownTimeoutMs: integerFromEnv(
      env,
      'TALLY_SHUTDOWN_TIMEOUT_MS',
      serviceDefaults.shutdownTimeoutMs,
      1,
    ),
  };
}

/**
 * `tally serve`: the HTTP API until SIGTERM/SIGINT, then stop accepting, finish the requests in
 * flight, close and exit 0 (exit 1 past the shutdown timeout or on a second signal).
 */
export async function runServer(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const config = serveConfigFromEnv(env);
  const logger = createLogger({ level: config.logLevel, format: config.logFormat });
  const tally = await createTally({
    redis: config.redisUrl,
    postgres: config.databaseUrl,
    shards: config.shards,
    keyPrefix: config.keyPrefix,
    buckets: config.buckets,
    retention: config.retention,
    idempotencyWindowMs: config.idempotencyWindowMs,
    redisLossAccepted: config.redisLossAccepted,
    durabilityCheckIntervalMs: config.durabilityCheckIntervalMs,
    minReplicas: config.minReplicas,
    replicaWaitTimeoutMs: config.replicaWaitTimeoutMs,
    redisCommandTimeoutMs: config.redisCommandTimeoutMs,
    incrementTimeoutMs: config.incrementTimeoutMs,
    maxBackdateMs: config.maxBackdateMs,
    maxFutureMs: config.maxFutureMs,
    queryTimeoutMs: config.queryTimeoutMs,
    logger,
  });
  const app = await buildApi({
    tally,
    tokens: config.tokens,
    bodyLimitBytes: config.bodyLimitBytes,
    maxBatch: config.maxBatch,
    requestTimeoutMs: config.requestTimeoutMs,
    keepAliveTimeoutMs: config.keepAliveTimeoutMs,
    maxConcurrentQueries: config.maxConcurrentQueries,
    exportIdleTimeoutMs: config.queryTimeoutMs,
    logger,
  });
  const closeAll = () =>
    closeInOrder([
      ['the HTTP server', () => app.close()], // waits for the requests in flight
      ['the engine', () => tally.close()],
    ]);
  try {
    await app.listen({ port: config.port, host: config.host });
  } catch (error) {
    await closeAll();
    throw new TallyError(
      'CONFIGURATION',
      `Cannot listen on HOST ${config.host} PORT ${config.port}: ${(error as Error).message}.`,
      { cause: error },
    );
  }
  const address = app.server.address();
  logger.info(
    {
      port: typeof address === 'object' && address !== null ? address.port : config.port,
      host: config.host,
      auth: config.tokens.length > 0,
      redisDurability: tally.durability.lossBound,
    },
    'tally api listening',
  );

  exitOnSignals(closeAll, { logger, timeoutMs: config.shutdownTimeoutMs });
}
