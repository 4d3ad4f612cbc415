// Tally's public API. Everything a user may import is named here; nothing else is exported.
export {
  createTally,
  type Tally,
  type IncrementItem,
  type ShardStatus,
  type TallyStatus,
} from './tally.js';
export type { RefusedBatchDecision, ResolvedBatch } from './engine/refused-batches.js';
export type { TallyOptions } from './config.js';
export type {
  BatchIncrementResult,
  IncrementOptions,
  IncrementResult,
  LimitState,
} from './engine/increments.js';
export type { AppliedBatch } from './engine/flusher.js';
export type { DeleteOptions, DeletionResult, DeletionTarget } from './engine/deletion.js';
export type { LedgerPruneReport } from './engine/ledger-pruning.js';
export type { BucketUpkeepReport } from './engine/bucket-upkeep.js';
export type { Drift, ShardReconcileReport } from './engine/reconciler.js';
export type { UsageBucket, UsageQuery } from './engine/usage.js';
export type {
  CounterSelection,
  LabelValue,
  QueryGranularity,
  UsagePage,
  UsageQueryInput,
  UsageRow,
  UsageWindow,
} from './engine/query-spec.js';
export type {
  CounterListing,
  LabelValues,
  LabelValuesOptions,
  ListCountersInput,
} from './engine/discovery.js';
export type { RedisDurability, RedisLossAccepted } from './redis/durability.js';
export type { Granularity } from './counters/buckets.js';
export type { LimitMode, LimitOptions } from './counters/limits.js';
export type { QuotaPer } from './counters/quota-periods.js';
export type { Retention, RetentionInput } from './counters/retention.js';
export { canonicalName, type CounterRef, type Labels } from './counters/counter-name.js';
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
} from './store/migrator.js';
