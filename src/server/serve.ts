import { pino } from 'pino';
import { createTally } from '../tally.js';
import { ValidationError } from '../errors.js';
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
  shutdownTimeoutMs: number;
  logLevel: string;
}

function integerFrom(env: NodeJS.ProcessEnv, name: string, fallback: number, min: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < min) {
    throw new ValidationError(`${name} must be a whole number ≥ ${min}, got ${raw}.`);
  }
  return value;
}

function required(env: NodeJS.ProcessEnv, name: string): string {
  const value = env[name];
  if (value === undefined || value === '') {
    throw new ValidationError(`${name} is not set: the server needs it to start.`);
  }
  return value;
}

/** `tally serve` configuration, from the environment; every default is set here. */
export function serveConfigFromEnv(env: NodeJS.ProcessEnv = process.env): ServeConfig {
  return {
    redisUrl: required(env, 'REDIS_URL'),
    databaseUrl: required(env, 'DATABASE_URL'),
    port: integerFrom(env, 'PORT', 8080, 0),
    host: env.HOST ?? '127.0.0.1',
    tokens: (env.TALLY_API_TOKEN ?? '')
      .split(',')
      .map((token) => token.trim())
      .filter((token) => token !== ''),
    shards: integerFrom(env, 'TALLY_SHARDS', 16, 1),
    keyPrefix: env.TALLY_KEY_PREFIX ?? 'tally',
    bodyLimitBytes: integerFrom(env, 'TALLY_BODY_LIMIT_BYTES', 1_048_576, 1),
    maxBatch: integerFrom(env, 'TALLY_MAX_BATCH', maxBatchDefault, 1),
    shutdownTimeoutMs: integerFrom(env, 'TALLY_SHUTDOWN_TIMEOUT_MS', 30_000, 1),
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

  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) process.exit(1);
    stopping = true;
    logger.info({ signal }, 'shutting down');
    setTimeout(() => process.exit(1), config.shutdownTimeoutMs).unref();
    app
      .close()
      .then(() => tally.close())
      .then(
        () => process.exit(0),
        (error: unknown) => {
          logger.error({ err: error }, 'shutdown failed');
          process.exit(1);
        },
      );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
