import { granularities, isGranularity, type Granularity } from '../counters/buckets.js';
import { parseRetention, type Retention } from '../counters/retention.js';
import {
  durabilityCheckIntervalDefaultMs,
  maxMinReplicas,
  maxShards,
  replicaWaitTimeoutDefaultMs,
  redisLossChoices,
  storeDefaults,
} from '../config.js';
import type { RedisLossAccepted } from '../redis/durability.js';
import { ValidationError } from '../errors.js';
import { parseRedisUrl } from '../redis/redis-url.js';
import { parseLogFormat, parseLogLevel, type LogFormat, type LogLevel } from './logging.js';
import { integerFromEnv, requiredEnv } from './lifecycle.js';

/**
 * What every long-running process (`tally serve`, `tally worker`) reads from the environment
 * about the store it serves; every default is set here.
 */
export interface StoreEnv {
  redisUrl: string;
  databaseUrl: string;
  shards: number;
  keyPrefix: string;
  buckets: Granularity[];
  /** TALLY_RETENTION: how long each granularity's buckets are kept. */
  retention: Retention;
  redisLossAccepted: RedisLossAccepted;
  /** How often Redis' durability settings are read again (TallyOptions). */
  durabilityCheckIntervalMs: number;
  /** TALLY_MIN_REPLICAS, TALLY_REPLICA_WAIT_TIMEOUT_MS (TallyOptions). */
  minReplicas: number;
  replicaWaitTimeoutMs: number;
  logLevel: LogLevel;
  logFormat: LogFormat | undefined;
}

const urlProtocols = {
  DATABASE_URL: ['postgres:', 'postgresql:'],
} as const;

/** Defaults of the services' own settings; the library's are in config.ts. */
export const serviceDefaults = {
  shutdownTimeoutMs: 30_000,
  flushIntervalMs: 1_000,
  workerConcurrency: 4,
  jobLockMs: 30_000,
  ledgerPruneIntervalMs: 60_000,
  // A minute range is a day wide and the next one always exists: a few runs a day would do.
  bucketUpkeepIntervalMs: 600_000,
} as const;

/**
 * A service URL, checked before anything connects: a typo then fails at once with exit 2 and
 * the variable's name, not as `ENOTFOUND` (exit 3) later. The message never repeats a password.
 */
export function serviceUrl(name: keyof typeof urlProtocols | 'REDIS_URL', raw: string): string {
  if (name === 'REDIS_URL') {
    parseRedisUrl(raw, name);
    return raw;
  }
  const protocols: readonly string[] = urlProtocols[name];
  let url: URL | undefined;
  try {
    url = new URL(raw);
  } catch {
    url = undefined;
  }
  // ioredis and pg decode the credentials; a bad %-escape there failed later, as exit 3.
  const decodes = (part: string) => {
    try {
      decodeURIComponent(part);
      return true;
    } catch {
      return false;
    }
  };
  if (
    url === undefined ||
    !protocols.includes(url.protocol) ||
    url.hostname === '' ||
    !decodes(url.username) ||
    !decodes(url.password)
  ) {
    throw new ValidationError(
      // Not repeated: a malformed URL is where a password would escape redaction.
      `${name} is not a valid URL: write it as ${protocols[0]}//host:port, with ` +
        'user:password@ before the host if the server needs them.',
    );
  }
  return raw;
}

/** `TALLY_BUCKETS`: the granularities kept, comma-separated (`hour,day` by default). */
export function parseBuckets(raw: string | undefined): Granularity[] {
  if (raw === undefined || raw === '') return [...storeDefaults.buckets];
  if (raw.trim() === 'none') return [];
  return raw.split(',').map((part) => {
    const name = part.trim();
    if (!isGranularity(name)) {
      throw new ValidationError(
        `TALLY_BUCKETS has ${JSON.stringify(name)}; use a comma-separated list of ` +
          `${granularities.join(', ')} (or none).`,
      );
    }
    return name;
  });
}

/** `TALLY_ACCEPT_REDIS_LOSS`: none (the default for the services), bounded or any. */
export function parseRedisLossAccepted(raw: string | undefined): RedisLossAccepted {
  if (raw === undefined || raw === '') return 'none';
  if (!(redisLossChoices as readonly string[]).includes(raw)) {
    throw new ValidationError(
      `TALLY_ACCEPT_REDIS_LOSS must be one of ${redisLossChoices.join(', ')}, got ${JSON.stringify(raw)}.`,
    );
  }
  return raw as RedisLossAccepted;
}

export function storeEnv(env: NodeJS.ProcessEnv): StoreEnv {
  return {
    redisUrl: serviceUrl('REDIS_URL', requiredEnv(env, 'REDIS_URL')),
    databaseUrl: serviceUrl('DATABASE_URL', requiredEnv(env, 'DATABASE_URL')),
    shards: integerFromEnv(env, 'TALLY_SHARDS', storeDefaults.shards, 1, maxShards),
    keyPrefix: env.TALLY_KEY_PREFIX ?? storeDefaults.keyPrefix,
    buckets: parseBuckets(env.TALLY_BUCKETS),
    retention: parseRetention(env.TALLY_RETENTION),
    redisLossAccepted: parseRedisLossAccepted(env.TALLY_ACCEPT_REDIS_LOSS),
    durabilityCheckIntervalMs: integerFromEnv(
      env,
      'TALLY_DURABILITY_CHECK_INTERVAL_MS',
      durabilityCheckIntervalDefaultMs,
      100,
    ),
    minReplicas: integerFromEnv(env, 'TALLY_MIN_REPLICAS', 0, 0, maxMinReplicas),
    replicaWaitTimeoutMs: integerFromEnv(
      env,
      'TALLY_REPLICA_WAIT_TIMEOUT_MS',
      replicaWaitTimeoutDefaultMs,
      1,
      60_000,
    ),
    logLevel: parseLogLevel(env.TALLY_LOG_LEVEL, 'info'),
    logFormat: parseLogFormat(env.TALLY_LOG_FORMAT),
  };
}
