import type { Logger } from 'pino';
import { ValidationError } from '../errors.js';

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

/**
 * Runs every step of a shutdown in order, each even when one before it failed (a connection
 * left open keeps the process alive), then throws one error naming every step that failed.
 */
export async function closeInOrder(
  steps: readonly (readonly [name: string, close: () => unknown])[],
): Promise<void> {
  const failures: { step: string; error: unknown }[] = [];
  for (const [step, close] of steps) {
    try {
      await close();
    } catch (error) {
      failures.push({ step, error });
    }
  }
  if (failures.length > 0) {
    throw new AggregateError(
      failures.map((failure) => failure.error),
      `Closing failed at ${failures
        .map(
          ({ step, error }) =>
            `${step} (${error instanceof Error ? error.message : String(error)})`,
        )
        .join(', ')}; every other step ran.`,
    );
  }
}

/**
 * A whole number written in plain decimal digits, from `min` to `max`: `0x10`, `16.0`, `1e1`
 * and ` 16` are refused, not read as 16 or 10 (`Number()` would take them all).
 */
export function strictInteger(raw: string, name: string, min: number, max: number): number {
  const value = /^-?\d{1,16}$/.test(raw) ? Number(raw) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ValidationError(
      `${name} must be a whole number from ${min} to ${max} in decimal digits, got ${JSON.stringify(raw)}.`,
    );
  }
  return value;
}

/** A whole number from the environment, or `fallback` when unset. */
export function integerFromEnv(
  env: NodeJS.ProcessEnv,
  name: string,
  fallback: number,
  min = 1,
  max = Number.MAX_SAFE_INTEGER,
): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  return strictInteger(raw, name, min, max);
}

/** A variable the process cannot start without. */
export function requiredEnv(env: NodeJS.ProcessEnv, name: string): string {
  const value = env[name];
  if (value === undefined || value === '') {
    throw new ValidationError(`${name} is not set: the process needs it to start.`);
  }
  return value;
}
