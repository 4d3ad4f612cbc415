// Tally's public API. Everything a user may import is named here; nothing else is exported.
export {
  createTally,
  type Tally,
  type IncrementItem,
  type ShardStatus,
  type TallyStatus,
} from './tally.js';
export type { TallyOptions } from './config.js';
export type { BatchIncrementResult, IncrementOptions, IncrementResult } from './increments.js';
export type { AppliedBatch } from './flusher.js';
export type { Drift, ShardReconcileReport } from './reconciler.js';
export type { UsageBucket, UsageQuery } from './usage.js';
export type { RedisDurability, RedisLossAccepted } from './durability.js';
export type { Granularity } from './buckets.js';
export { canonicalName, type CounterRef, type Labels } from './counter-name.js';
export {
  tallyMetering,
  expressMetering,
  type MeteringOptions,
  type IncomingLike,
} from './metering.js';
export {
  TallyError,
  ValidationError,
  FlushError,
  OverflowError,
  IdempotencyKeyReusedError,
  SchemaError,
  type TallyErrorCode,
} from './errors.js';
export {
  migrate,
  assertSchemaCurrent,
  loadMigrations,
  type Migration,
  type MigrateOptions,
  type MigrateResult,
} from './migrator.js';
