/**
 * Every error Tally raises on purpose is a TallyError with a stable `code`: callers branch on
 * `code`, never on message text. Messages say what went wrong and how to fix it; the original
 * error, when there is one, is kept as `cause`.
 */
export type TallyErrorCode =
  // Bad input: nothing was changed.
  | 'VALIDATION'
  // The increment would take the counter past ±(2^53−1): nothing was changed.
  | 'OVERFLOW'
  // The increment would take the counter past its limit: nothing was changed.
  | 'OVER_LIMIT'
  // The idempotency key was counted with other parameters (by, at, limit): nothing was changed.
  | 'IDEMPOTENCY_KEY_REUSED'
  // The request reached Redis but its reply did not come back: it may or may not have been
  // applied. Retry with the same idempotency key to make sure it counts exactly once.
  | 'OUTCOME_UNKNOWN'
  // Redis or PostgreSQL could not be reached: nothing was changed.
  | 'UNAVAILABLE'
  // The process is configured differently from the store it connects to.
  | 'CONFIGURATION'
  // Redis could lose acknowledged increments and `requireDurableRedis` is set.
  | 'NOT_DURABLE'
  | 'SCHEMA_TOO_NEW'
  | 'SCHEMA_OUT_OF_DATE'
  | 'MIGRATION_MODIFIED'
  | 'MIGRATION_FILES_INVALID'
  // A flush found an in-flight batch older than the pruned part of the flush ledger and no row
  // for it: it may have been applied already, so it was kept in flight and not applied.
  | 'BATCH_REFUSED'
  // Another process holds the shard's flush lock (a flush or reconcile is running there).
  | 'BUSY'
  // The client was closed.
  | 'CLOSED';

export class TallyError extends Error {
  override readonly name: string = 'TallyError';
  /** Structured facts for the caller (which item of a batch, which limit), when there are any. */
  readonly details: unknown;

  constructor(
    readonly code: TallyErrorCode,
    message: string,
    options: { cause?: unknown; details?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.details = options.details;
  }
}

/** Input that Tally refuses; nothing was changed. */
export class ValidationError extends TallyError {
  override readonly name = 'ValidationError';
  constructor(message: string, options?: { cause?: unknown; details?: unknown }) {
    super('VALIDATION', message, options);
  }
}

/** The increment would take the counter past ±(2^53−1); nothing was changed. */
export class OverflowError extends TallyError {
  override readonly name = 'OverflowError';
  constructor(
    readonly counter: string,
    readonly delta: number,
    /** The counter's total, unchanged. */
    readonly value: number,
  ) {
    super(
      'OVERFLOW',
      `Adding ${delta} to ${counter} (now ${value}) would leave ±(2^53−1); nothing was changed.`,
      { details: { counter, value } },
    );
  }
}

/**
 * The idempotency key was counted before with another `by`, `at` or `limit`: a client bug (one
 * key for two operations), not a retry. Nothing was changed; the first increment stands.
 */
export class IdempotencyKeyReusedError extends TallyError {
  override readonly name = 'IdempotencyKeyReusedError';
  constructor(
    readonly counter: string,
    readonly idempotencyKey: string,
    /** The counter's total, unchanged. */
    readonly value: number,
  ) {
    super(
      'IDEMPOTENCY_KEY_REUSED',
      `The idempotency key ${JSON.stringify(idempotencyKey)} of ${counter} was counted with ` +
        'other parameters (by, at or limit); nothing was changed. Use a new key for a new increment.',
      { details: { counter, idempotencyKey, value } },
    );
  }
}

/** A flush of one batch failed; the batch stays in flight and the next flush retries it. */
export class FlushError extends TallyError {
  override readonly name = 'FlushError';
  constructor(
    readonly shard: number,
    readonly batchId: string,
    cause: TallyError,
  ) {
    super(cause.code, cause.message, { cause: cause.cause, details: { shard, batchId } });
  }
}

/** The database schema does not match the migrations this version of Tally ships. */
export class SchemaError extends TallyError {
  override readonly name = 'SchemaError';
}
