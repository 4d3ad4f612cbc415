import { pino } from 'pino';
import { idempotencyWindowDefaultMs } from '../config.js';
import { createTally } from '../tally.js';
import { exitOnSignals, integerFromEnv, requiredEnv } from '../process-lifecycle.js';
import { buildApi } from './api.js';
import { maxBatchDefault } from './schemas.js';

export interface ServeConfig {
  redisUrl: string;
  databaseUrl: string;
  port: number;
  host: string;
  tokens: string[];
  shards: number;
  keyPrefix: string;
  bodyLimitBytes: number;
  maxBatch: number;
  /** How long an idempotency key is remembered: longer than any client keeps retrying. */
  idempotencyWindowMs: number;
  shutdownTimeoutMs: number;
  logLevel: string;
}

/** `tally serve` configuration, from the environment; every default is set here. */
export function serveConfigFromEnv(env: NodeJS.ProcessEnv = process.env): ServeConfig {
  return {
    redisUrl: requiredEnv(env, 'REDIS_URL'),
    databaseUrl: requiredEnv(env, 'DATABASE_URL'),
    port: integerFromEnv(env, 'PORT', 8080, 0),
    host: env.HOST ?? '127.0.0.1',
    tokens: (env.TALLY_API_TOKEN ?? '')
      .split(',')
      .map((token) => token.trim())
      .filter((token) => token !== ''),
    shards: integerFromEnv(env, 'TALLY_SHARDS', 16, 1),
    keyPrefix: env.TALLY_KEY_PREFIX ?? 'tally',
    bodyLimitBytes: integerFromEnv(env, 'TALLY_BODY_LIMIT_BYTES', 1_048_576, 1),
    maxBatch: integerFromEnv(env, 'TALLY_MAX_BATCH', maxBatchDefault, 1),
    idempotencyWindowMs: integerFromEnv(
      env,
      'TALLY_IDEMPOTENCY_WINDOW_MS',
      idempotencyWindowDefaultMs,
      1,
    ),
    shutdownTimeoutMs: integerFromEnv(env, 'TALLY_SHUTDOWN_TIMEOUT_MS', 30_000, 1),
    logLevel: env.TALLY_LOG_LEVEL ?? 'info',
  };
}

/**
 * `tally serve`: the HTTP API until SIGTERM/SIGINT, then stop accepting, finish the requests in
 * flight, close and exit 0 (exit 1 past the shutdown timeout or on a second signal).
 */
export async function runServer(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const config = serveConfigFromEnv(env);
  const logger = pino({ level: config.logLevel });
  const tally = await createTally({
    redis: config.redisUrl,
    postgres: config.databaseUrl,
    shards: config.shards,
    keyPrefix: config.keyPrefix,
    idempotencyWindowMs: config.idempotencyWindowMs,
    logger,
  });
  const app = await buildApi({
    tally,
    tokens: config.tokens,
    bodyLimitBytes: config.bodyLimitBytes,
    maxBatch: config.maxBatch,
    logger,
  });
  await app.listen({ port: config.port, host: config.host });
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

  exitOnSignals(
    async () => {
      await app.close();
      await tally.close();
    },
    { logger, timeoutMs: config.shutdownTimeoutMs },
  );
}
