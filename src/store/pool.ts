import pg from 'pg';
import type { Logger } from 'pino';
import { TallyError } from '../errors.js';

/**
 * Tally's pool: the caller's (its settings are the caller's), or one from a URL, which gives
 * up after `connectTimeoutMs` (node-postgres waits forever by default: a server that accepts
 * the connection and falls silent would hang whatever needs a new client). node-postgres
 * bounds the wait for a free client by the same time. Either way it gets an `error` listener.
 */
export function openPostgres(
  option: string | pg.Pool,
  connectTimeoutMs: number,
  logger: Logger,
): pg.Pool {
  const pool =
    typeof option === 'string'
      ? new pg.Pool({ connectionString: option, connectionTimeoutMillis: connectTimeoutMs })
      : option;
  // An idle client whose server restarted emits 'error' on the pool; unhandled, it would end
  // the process.
  pool.on('error', (error: Error & { code?: string }) => {
    // Not the error itself: node-postgres hangs the whole client (and its queries) on it.
    // 57P01 is an administrator's shutdown (a restart, `tally dev` stopping its server).
    const level = error.code === '57P01' ? 'info' : 'warn';
    logger[level]({ message: error.message, code: error.code }, 'postgres idle client error');
  });
  return pool;
}

/** The typed error for a PostgreSQL call that failed (server down, connection lost, ...). */
export function postgresFailure(error: unknown, what: string): TallyError {
  if (error instanceof TallyError) return error;
  return new TallyError('UNAVAILABLE', `PostgreSQL could not serve ${what}.`, { cause: error });
}

/**
 * PostgreSQL's reply, or UNAVAILABLE once it has sent nothing for `timeoutMs`: a server (or a
 * network path) that falls silent answers no statement timeout, and a usage query's
 * transaction has none anyway (an export's COPY lasts as long as its reader reads). The caller
 * then closes the client.
 */
export async function inTime<T>(reply: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(
        new TallyError(
          'UNAVAILABLE',
          `PostgreSQL sent nothing for ${timeoutMs} ms during ${what} (option queryTimeoutMs, TALLY_QUERY_TIMEOUT_MS).`,
        ),
      );
    }, timeoutMs);
  });
  try {
    return await Promise.race([reply, late]);
  } finally {
    clearTimeout(timer);
  }
}
