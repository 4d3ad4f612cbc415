import type { Logger } from 'pino';
import { ValidationError } from './errors.js';

/**
 * How Tally's long-running processes end: on SIGTERM or SIGINT, `close` runs (stop taking work,
 * finish what is in progress, close connections) and the process exits 0; past `timeoutMs`, or
 * on a second signal, it exits 1 at once.
 */
export function exitOnSignals(
  close: () => Promise<void>,
  options: { logger: Logger; timeoutMs: number },
): void {
  const { logger, timeoutMs } = options;
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal, timeoutMs }, 'shutting down');
    setTimeout(() => {
      logger.error({ timeoutMs }, 'shutdown timed out: exiting now');
      process.exit(1);
    }, timeoutMs).unref();
    close().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

/** A whole number from the environment, or `fallback` when unset. */
export function integerFromEnv(
  env: NodeJS.ProcessEnv,
  name: string,
  fallback: number,
  min = 1,
): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < min) {
    throw new ValidationError(`${name} must be a whole number ≥ ${min}, got ${raw}.`);
  }
  return value;
}

/** A variable the process cannot start without. */
export function requiredEnv(env: NodeJS.ProcessEnv, name: string): string {
  const value = env[name];
  if (value === undefined || value === '') {
    throw new ValidationError(`${name} is not set: the process needs it to start.`);
  }
  return value;
}
