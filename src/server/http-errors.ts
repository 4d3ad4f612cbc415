import { STATUS_CODES } from 'node:http';
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
  // As the IETF's Idempotency-Key draft: a key reused with another payload is 422.
  IDEMPOTENCY_KEY_REUSED: 422,
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
  // Flushes only: an operator's decision is needed (docs/operations.md).
  BATCH_REFUSED: 500,
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
    // "must be equal to one of the allowed values" says little without them.
    const allowed: unknown = fastifyError.validation[0]?.params.allowedValues;
    const choices = Array.isArray(allowed) ? ` (${allowed.map(String).join(', ')})` : '';
    return answer(
      400,
      'VALIDATION',
      `Invalid request: ${fastifyError.message ?? 'it does not match the schema'}${choices}.`,
      fastifyError.validation.map((issue) => ({
        in: fastifyError.validationContext,
        path: issue.instancePath,
        problem: issue.message,
      })),
    );
  }
  switch (fastifyError.code) {
    case 'FST_ERR_BAD_URL':
      return answer(400, 'VALIDATION', 'The path is not valid percent-encoding.');
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return answer(414, 'URI_TOO_LONG', 'A path parameter is longer than any valid one.');
  }
  switch (fastifyError.statusCode) {
    case 401:
      return answer(401, 'UNAUTHORIZED', 'Send a valid token as Authorization: Bearer <token>.');
    case 405:
      return answer(405, 'METHOD_NOT_ALLOWED', 'This path does not take that method (see Allow).');
    case 413:
      return answer(413, 'PAYLOAD_TOO_LARGE', 'The request body is larger than this API accepts.');
    case 415:
      return answer(
        415,
        'UNSUPPORTED_MEDIA_TYPE',
        'Send the body as application/json, without a Content-Encoding.',
      );
    case 400:
      return answer(400, 'VALIDATION', `Invalid request: ${fastifyError.message ?? 'bad body'}.`);
    default:
      return answer(500, 'INTERNAL', 'The server failed to answer; it has logged why.');
  }
}

/** Node's answers to a request it could not parse or wait for, in the API's error shape. */
const clientErrors: Record<string, { status: number; code: string; message: string }> = {
  ERR_HTTP_REQUEST_TIMEOUT: {
    status: 408,
    code: 'REQUEST_TIMEOUT',
    message: 'The request took too long to arrive.',
  },
  HPE_HEADER_OVERFLOW: {
    status: 431,
    code: 'HEADERS_TOO_LARGE',
    message: 'The request headers are larger than this API accepts.',
  },
};

/** The raw HTTP response to a client error (the socket is closed after it). */
export function clientErrorResponse(error: NodeJS.ErrnoException): string {
  const found = clientErrors[error.code ?? ''] ?? {
    status: 400,
    code: 'BAD_REQUEST',
    message: 'The request is not valid HTTP.',
  };
  const body = JSON.stringify({ error: { code: found.code, message: found.message } });
  return (
    `HTTP/1.1 ${found.status} ${STATUS_CODES[found.status] ?? ''}\r\n` +
    `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
    `Connection: close\r\n\r\n${body}`
  );
}
