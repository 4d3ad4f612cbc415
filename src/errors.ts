/**
 * Every error Tally raises on purpose is a TallyError with a stable `code`: callers branch on
 * `code`, never on message text. Messages say what went wrong and how to fix it; the original
 * error, when there is one, is kept as `cause`.
 */
export type TallyErrorCode =
  'SCHEMA_TOO_NEW' | 'SCHEMA_OUT_OF_DATE' | 'MIGRATION_MODIFIED' | 'MIGRATION_FILES_INVALID';

export class TallyError extends Error {
  override readonly name: string = 'TallyError';

  constructor(
    readonly code: TallyErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The database schema does not match the migrations this version of Tally ships. */
export class SchemaError extends TallyError {
  override readonly name = 'SchemaError';
}
