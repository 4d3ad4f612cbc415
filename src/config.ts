import type { Cluster, Redis } from 'ioredis';
import type pg from 'pg';
import { pino, type Logger } from 'pino';
import { granularities, isGranularity, type Granularity } from './buckets.js';
import { ValidationError } from './errors.js';

export interface TallyOptions {
  /** Redis URL, or an ioredis Redis / Cluster instance (Tally uses a duplicate of it). */
  redis: string | Redis | Cluster;
  /** PostgreSQL URL, or a pg Pool (Tally adds an `error` listener to it). */
  postgres: string | pg.Pool;
  /** Number of shards. Fixed for the life of a store: recorded in PostgreSQL at set-up. */
  shards?: number;
  /** UTC buckets every increment is also counted in. */
  buckets?: readonly Granularity[];
  /** Prefix of every Redis key; two stores sharing a Redis need different prefixes. */
  keyPrefix?: string;
  /** How long an idempotency key is remembered. */
  idempotencyWindowMs?: number;
  logger?: Logger;
  /** Send the increments issued in one tick as one script call per shard. */
  coalesce?: boolean;
  /** Refuse to start when Redis could lose acknowledged increments. */
  requireDurableRedis?: boolean;
  /** A Redis reply later than this makes the call fail: OUTCOME_UNKNOWN for increments. */
  redisCommandTimeoutMs?: number;
  /** How long a flush or reconcile holds a shard's lock before another process may take it. */
  flushLockTtlMs?: number;
  /** Counters per script call when reconcile compares or rebuilds. */
  reconcileChunkSize?: number;
  /**
   * Rebuild, at start-up, every shard whose Redis totals lack the PostgreSQL base. Off for
   * tools that report on the store as they find it (`tally reconcile`, `tally status`).
   */
  rebuildAtStart?: boolean;
}

export interface ResolvedConfig {
  shards: number;
  buckets: readonly Granularity[];
  keyPrefix: string;
  idempotencyWindowMs: number;
  logger: Logger;
  coalesce: boolean;
  requireDurableRedis: boolean;
  redisCommandTimeoutMs: number;
  flushLockTtlMs: number;
  reconcileChunkSize: number;
  rebuildAtStart: boolean;
}

function integerIn(name: string, value: number, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ValidationError(`Option ${name} must be a whole number from ${min} to ${max}.`);
  }
  return value;
}

/** How long an idempotency key is remembered unless configured (also `tally serve`'s default). */
export const idempotencyWindowDefaultMs = 24 * 3_600_000;

/** Every default lives here, once. */
export function resolveConfig(options: TallyOptions): ResolvedConfig {
  const buckets = options.buckets ?? ['hour', 'day'];
  for (const bucket of buckets) {
    if (!isGranularity(bucket)) {
      throw new ValidationError(
        `Option buckets has ${JSON.stringify(bucket)}; use ${granularities.join(', ')}.`,
      );
    }
  }
  const keyPrefix = options.keyPrefix ?? 'tally';
  if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(keyPrefix)) {
    throw new ValidationError('Option keyPrefix must be 1-64 of A-Z a-z 0-9 _ . : -');
  }
  return {
    shards: integerIn('shards', options.shards ?? 16, 1, 16_384),
    buckets: [...new Set(buckets)],
    keyPrefix,
    idempotencyWindowMs: integerIn(
      'idempotencyWindowMs',
      options.idempotencyWindowMs ?? idempotencyWindowDefaultMs,
      1,
      366 * 24 * 3_600_000,
    ),
    logger: options.logger ?? pino({ level: 'silent' }),
    coalesce: options.coalesce ?? true,
    requireDurableRedis: options.requireDurableRedis ?? false,
    redisCommandTimeoutMs: integerIn(
      'redisCommandTimeoutMs',
      options.redisCommandTimeoutMs ?? 2_000,
      1,
      3_600_000,
    ),
    flushLockTtlMs: integerIn('flushLockTtlMs', options.flushLockTtlMs ?? 30_000, 100, 3_600_000),
    rebuildAtStart: options.rebuildAtStart ?? true,
    reconcileChunkSize: integerIn(
      'reconcileChunkSize',
      options.reconcileChunkSize ?? 1_000,
      1,
      100_000,
    ),
  };
}
