import type { FastifyError } from 'fastify';
import { TallyError, type TallyErrorCode } from '../errors.js';

/** The one shape of every error answer: `{"error":{"code","message","details"?}}`. */
export interface ErrorBody {
  error: { code: string; message: string; details?: unknown };
}

export interface HttpError {
  status: number;
  body: ErrorBody;
}

/**
 * HTTP status per engine error code. 409 for state conflicts (over the limit, or past the
 * value range); 503 when Redis or PostgreSQL could not serve the call, including an unknown
 * outcome: the client retries with the same idempotency keys, which makes the retry exact.
 */
const statusByCode: Record<TallyErrorCode, number> = {
  VALIDATION: 400,
  OVERFLOW: 409,
  OVER_LIMIT: 409,
  OUTCOME_UNKNOWN: 503,
  UNAVAILABLE: 503,
  BUSY: 503,
  CLOSED: 503,
  CONFIGURATION: 500,
  NOT_DURABLE: 500,
  SCHEMA_TOO_NEW: 500,
  SCHEMA_OUT_OF_DATE: 500,
  MIGRATION_MODIFIED: 500,
  MIGRATION_FILES_INVALID: 500,
};

function answer(status: number, code: string, message: string, details?: unknown): HttpError {
  return {
    status,
    body: { error: { code, message, ...(details === undefined ? {} : { details }) } },
  };
}

/** Turns anything a route or Fastify threw into the status and body the client gets. */
export function toHttpError(error: unknown): HttpError {
  if (error instanceof TallyError) {
    return answer(statusByCode[error.code], error.code, error.message, error.details);
  }
  const fastifyError = error as Partial<FastifyError>;
  if (fastifyError.validation !== undefined) {
    return answer(
      400,
      'VALIDATION',
      `Invalid request: ${fastifyError.message ?? 'it does not match the schema'}.`,
      fastifyError.validation.map((issue) => ({
        in: fastifyError.validationContext,
        path: issue.instancePath,
        problem: issue.message,
      })),
    );
  }
  switch (fastifyError.statusCode) {
    case 401:
      return answer(401, 'UNAUTHORIZED', 'Send a valid token as Authorization: Bearer <token>.');
    case 413:
      return answer(413, 'PAYLOAD_TOO_LARGE', 'The request body is larger than this API accepts.');
    case 415:
      return answer(415, 'UNSUPPORTED_MEDIA_TYPE', 'Send the body as application/json.');
    case 400:
      return answer(400, 'VALIDATION', `Invalid request: ${fastifyError.message ?? 'bad body'}.`);
    default:
      return answer(500, 'INTERNAL', 'The server failed to answer; it has logged why.');
  }
}
