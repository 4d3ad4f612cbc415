import { TallyError, type TallyErrorCode } from '../errors.js';

/** The exit codes of every `tally` command. */
export const ExitCode = {
  ok: 0,
  /** A check failed: drift found, something left to flush. */
  checkFailed: 1,
  /** Bad usage or configuration: fix the command line or the environment. */
  usage: 2,
  /** Redis or PostgreSQL could not be reached, or did not answer. */
  unavailable: 3,
} as const;

const byCode: Record<TallyErrorCode, number> = {
  VALIDATION: ExitCode.usage,
  CONFIGURATION: ExitCode.usage,
  NOT_DURABLE: ExitCode.usage,
  SCHEMA_TOO_NEW: ExitCode.usage,
  SCHEMA_OUT_OF_DATE: ExitCode.usage,
  MIGRATION_MODIFIED: ExitCode.usage,
  MIGRATION_FILES_INVALID: ExitCode.usage,
  OVERFLOW: ExitCode.checkFailed,
  OVER_LIMIT: ExitCode.checkFailed,
  IDEMPOTENCY_KEY_REUSED: ExitCode.checkFailed,
  BATCH_REFUSED: ExitCode.checkFailed,
  OUTCOME_UNKNOWN: ExitCode.unavailable,
  UNAVAILABLE: ExitCode.unavailable,
  BUSY: ExitCode.unavailable,
  CLOSED: ExitCode.unavailable,
};

/** Errors of the network and of a server going away, as Node and PostgreSQL name them. */
const unreachable = /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|57P0\d)$/;

export function exitCodeFor(error: unknown): number {
  if (error instanceof TallyError) return byCode[error.code];
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && unreachable.test(code)) return ExitCode.unavailable;
  if (error instanceof AggregateError) return exitCodeFor(error.errors[0]);
  return ExitCode.unavailable;
}
