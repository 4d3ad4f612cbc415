import type { Cluster, Redis } from 'ioredis';
import type pg from 'pg';
import { pino, type Logger } from 'pino';
import { granularities, isGranularity, type Granularity } from './counters/buckets.js';
import { resolveRetention, type Retention, type RetentionInput } from './counters/retention.js';
import type { RedisLossAccepted } from './redis/durability.js';
import { ValidationError } from './errors.js';
import { ledgerClockMarginMs } from './engine/ledger-pruning.js';

export interface TallyOptions {
  /** Redis URL, or an ioredis Redis / Cluster instance (Tally uses a duplicate of it). */
  redis: string | Redis | Cluster;
  /** PostgreSQL URL, or a pg Pool (Tally adds an `error` listener to it). */
  postgres: string | pg.Pool;
  /** Number of shards (default 16). Fixed for the life of a store: recorded at set-up. */
  shards?: number;
  /** UTC buckets every increment is also counted in (default hour and day). */
  buckets?: readonly Granularity[];
  /**
   * How long the buckets of each granularity are kept: '7d', '90d', '3y' (y = 365 days), ms,
   * or null to keep them forever. Defaults: minute 7d, hour 90d, day 3y, month forever. An
   * increment dated before the retention of a kept granularity is refused.
   */
  retention?: RetentionInput;
  /**
   * Prefix of every Redis key (default 'tally'); two stores sharing a Redis need different
   * prefixes. Fixed for the life of a store: recorded at set-up.
   */
  keyPrefix?: string;
  /** How long an idempotency key is remembered (default 24 h). */
  idempotencyWindowMs?: number;
  /** A pino logger (default: silent). */
  logger?: Logger;
  /** Send the increments issued in one tick as one script call per shard (default true). */
  coalesce?: boolean;
  /**
   * Which Redis settings Tally accepts: 'none' only a Redis that loses nothing acknowledged
   * (AOF appendfsync always, maxmemory-policy noeviction); 'bounded' also one that can lose the
   * increments of a bounded window on a restart (AOF everysec, no AOF) but never evicts;
   * 'any' also an evicting Redis, which can drop idempotency keys (a retry counted twice) and
   * pending deltas. Checked at start-up (refused: NOT_DURABLE), on every reconnect and
   * periodically (status and readiness follow). Default 'bounded'.
   */
  redisLossAccepted?: RedisLossAccepted;
  /** How often Redis' durability settings are read again while running (default 10 s). */
  durabilityCheckIntervalMs?: number;
  /** How far before now an increment's `at` may lie (default 35 days; older is refused). */
  maxBackdateMs?: number;
  /** How far after now an increment's `at` may lie (default 5 minutes: clock skew). */
  maxFutureMs?: number;
  /** A Redis reply later than this (default 2 s) fails the call: OUTCOME_UNKNOWN for increments. */
  redisCommandTimeoutMs?: number;
  /**
   * Longest time an increment may take, its retries after a lost reply included: no retry
   * starts that could end past it (4 attempts at a 2 s command timeout took 8.6 s). Default 5 s.
   */
  incrementTimeoutMs?: number;
  /**
   * Replicas that must hold an increment before it is acknowledged (default 0, at most 16):
   * a group-commit turn's calls to each server are followed, on the same connection, by one
   * WAIT for them, and a WAIT that ends with fewer reports OUTCOME_UNKNOWN (the increment may be on the
   * primary only; a keyed retry settles it). Flushes wait for at least as many. Needs replicas:
   * with fewer connected than this, every increment fails.
   */
  minReplicas?: number;
  /** How long an increment waits for its `minReplicas` (default 1 s). */
  replicaWaitTimeoutMs?: number;
  /** How long a flush or reconcile holds a shard's lock before another may take it (default 30 s). */
  flushLockTtlMs?: number;
  /**
   * How long the flush ledger keeps the row of an applied batch (default 7 days, at least
   * 3 hours): the longest a batch can reappear in Redis (a Redis restored from a backup this
   * old) and still be recognised as applied. Older rows are pruned (`pruneLedger`, run by the
   * worker); an older batch that reappears is refused, not applied (BATCH_REFUSED).
   */
  ledgerRetentionMs?: number;
  /** Counters per script call when reconcile compares or rebuilds (default 1000). */
  reconcileChunkSize?: number;
  /**
   * Longest time PostgreSQL may stay silent during a usage query — summing before its first
   * rows, or between two chunks of an export — and the longest statement of a listing (default
   * 30 s). Past it the query fails with UNAVAILABLE. A pool Tally opens from a URL also gives
   * up connecting, or waiting for a free client, after it (10 s at least). A pool you pass is
   * yours to configure: set its `connectionTimeoutMillis`.
   */
  queryTimeoutMs?: number;
  /**
   * Rebuild, at start-up, every shard whose Redis totals lack the PostgreSQL base, and record
   * the granularities this process keeps (a new one is readable from now on only). Off for
   * tools that report on the store as they find it (`tally reconcile`, `tally status`): they
   * change neither, whatever their TALLY_BUCKETS. Default true.
   */
  rebuildAtStart?: boolean;
}

export interface ResolvedConfig {
  shards: number;
  buckets: readonly Granularity[];
  retention: Retention;
  keyPrefix: string;
  idempotencyWindowMs: number;
  logger: Logger;
  coalesce: boolean;
  redisLossAccepted: RedisLossAccepted;
  durabilityCheckIntervalMs: number;
  maxBackdateMs: number;
  maxFutureMs: number;
  redisCommandTimeoutMs: number;
  incrementTimeoutMs: number;
  minReplicas: number;
  replicaWaitTimeoutMs: number;
  flushLockTtlMs: number;
  reconcileChunkSize: number;
  queryTimeoutMs: number;
  rebuildAtStart: boolean;
  ledgerRetentionMs: number;
}

function integerIn(name: string, value: number, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ValidationError(`Option ${name} must be a whole number from ${min} to ${max}.`);
  }
  return value;
}

/**
 * `replicaWaitTimeoutMs`, below `redisCommandTimeoutMs`: the client gives up on a WAIT at the
 * command timeout, so a longer wait would end as a timeout of every call it covers.
 */
function replicaWaitTimeout(options: TallyOptions): number {
  const commandTimeoutMs = options.redisCommandTimeoutMs ?? redisCommandTimeoutDefaultMs;
  const waitMs = integerIn(
    'replicaWaitTimeoutMs',
    options.replicaWaitTimeoutMs ??
      Math.max(1, Math.min(replicaWaitTimeoutDefaultMs, Math.floor(commandTimeoutMs / 2))),
    1,
    60_000,
  );
  if ((options.minReplicas ?? 0) > 0 && waitMs >= commandTimeoutMs) {
    throw new ValidationError(
      `Option replicaWaitTimeoutMs (${waitMs}) must be below redisCommandTimeoutMs ` +
        `(${commandTimeoutMs}): the client gives up on a WAIT at the command timeout.`,
    );
  }
  return waitMs;
}

/** The most shards a store may have. */
export const maxShards = 16_384;

/** The widest `maxBackdateMs` (ten years) and `maxFutureMs` (a day). */
export const maxWindowMs = 10 * 366 * 24 * 3_600_000;
export const maxFutureLimitMs = 24 * 3_600_000;

export const redisLossChoices = ['none', 'bounded', 'any'] as const;

function lossAccepted(value: unknown): RedisLossAccepted {
  if (!(redisLossChoices as readonly unknown[]).includes(value)) {
    throw new ValidationError(
      `Option redisLossAccepted must be one of ${redisLossChoices.join(', ')}, got ${JSON.stringify(value)}.`,
    );
  }
  return value as RedisLossAccepted;
}

/**
 * The store's defaults, shared by the library, serve, worker, the CLI and dev (and their help
 * texts): written once, here.
 */
export const storeDefaults = {
  shards: 16,
  keyPrefix: 'tally',
  buckets: ['hour', 'day'] as readonly Granularity[],
} as const;

/** Defaults `tally serve` shares with the library. */
export const redisCommandTimeoutDefaultMs = 2_000;
export const incrementTimeoutDefaultMs = 5_000;
export const replicaWaitTimeoutDefaultMs = 1_000;
/** The most replicas `minReplicas` may ask for. */
export const maxMinReplicas = 16;
export const durabilityCheckIntervalDefaultMs = 10_000;
// Stripe's meter events take the same window: 35 days back (a billing month and its
// late-arriving events), 5 minutes ahead (hosts' clocks disagree).
export const maxBackdateDefaultMs = 35 * 24 * 3_600_000;
export const maxFutureDefaultMs = 5 * 60_000;

/** How long an idempotency key is remembered unless configured (also `tally serve`'s default). */
export const idempotencyWindowDefaultMs = 24 * 3_600_000;
export const ledgerRetentionDefaultMs = 7 * 24 * 3_600_000;
/** See engine/ledger-pruning.ts: a retention under three clock margins could refuse new batches. */
export const ledgerRetentionMinMs = 3 * ledgerClockMarginMs;
export const flushLockTtlDefaultMs = 30_000;
export const queryTimeoutDefaultMs = 30_000;
/**
 * The least a pool opened from a URL waits to connect (or for a free client): a remote
 * PostgreSQL's TLS and SCRAM handshake can take longer than a short query timeout.
 */
export const postgresConnectTimeoutFloorMs = 10_000;

/** Every default lives here, once. */
export function resolveConfig(options: TallyOptions): ResolvedConfig {
  const buckets = options.buckets ?? storeDefaults.buckets;
  for (const bucket of buckets) {
    if (!isGranularity(bucket)) {
      throw new ValidationError(
        `Option buckets has ${JSON.stringify(bucket)}; use ${granularities.join(', ')}.`,
      );
    }
  }
  const keyPrefix = options.keyPrefix ?? storeDefaults.keyPrefix;
  if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(keyPrefix)) {
    throw new ValidationError('Option keyPrefix must be 1-64 of A-Z a-z 0-9 _ . : -');
  }
  return {
    shards: integerIn('shards', options.shards ?? storeDefaults.shards, 1, maxShards),
    buckets: [...new Set(buckets)],
    retention: resolveRetention(options.retention, 'Option retention'),
    keyPrefix,
    idempotencyWindowMs: integerIn(
      'idempotencyWindowMs',
      options.idempotencyWindowMs ?? idempotencyWindowDefaultMs,
      1,
      366 * 24 * 3_600_000,
    ),
    logger: options.logger ?? pino({ level: 'silent' }),
    coalesce: options.coalesce ?? true,
    redisLossAccepted: lossAccepted(options.redisLossAccepted ?? 'bounded'),
    durabilityCheckIntervalMs: integerIn(
      'durabilityCheckIntervalMs',
      options.durabilityCheckIntervalMs ?? durabilityCheckIntervalDefaultMs,
      100,
      3_600_000,
    ),
    maxBackdateMs: integerIn(
      'maxBackdateMs',
      options.maxBackdateMs ?? maxBackdateDefaultMs,
      0,
      maxWindowMs,
    ),
    maxFutureMs: integerIn(
      'maxFutureMs',
      options.maxFutureMs ?? maxFutureDefaultMs,
      0,
      maxFutureLimitMs,
    ),
    redisCommandTimeoutMs: integerIn(
      'redisCommandTimeoutMs',
      options.redisCommandTimeoutMs ?? redisCommandTimeoutDefaultMs,
      1,
      3_600_000,
    ),
    incrementTimeoutMs: integerIn(
      'incrementTimeoutMs',
      options.incrementTimeoutMs ?? incrementTimeoutDefaultMs,
      1,
      3_600_000,
    ),
    minReplicas: integerIn('minReplicas', options.minReplicas ?? 0, 0, maxMinReplicas),
    replicaWaitTimeoutMs: replicaWaitTimeout(options),
    flushLockTtlMs: integerIn(
      'flushLockTtlMs',
      options.flushLockTtlMs ?? flushLockTtlDefaultMs,
      100,
      3_600_000,
    ),
    rebuildAtStart: options.rebuildAtStart ?? true,
    ledgerRetentionMs: integerIn(
      'ledgerRetentionMs',
      options.ledgerRetentionMs ?? ledgerRetentionDefaultMs,
      ledgerRetentionMinMs,
      maxWindowMs,
    ),
    reconcileChunkSize: integerIn(
      'reconcileChunkSize',
      options.reconcileChunkSize ?? 1_000,
      1,
      100_000,
    ),
    queryTimeoutMs: integerIn(
      'queryTimeoutMs',
      options.queryTimeoutMs ?? queryTimeoutDefaultMs,
      100,
      3_600_000,
    ),
  };
}
