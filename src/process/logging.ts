import { pino, stdSerializers, type Logger } from 'pino';
import pinoPretty from 'pino-pretty';
import { ValidationError } from '../errors.js';

/** The levels `TALLY_LOG_LEVEL` takes (pino's). */
export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof logLevels)[number];

export function parseLogLevel(raw: string | undefined, fallback: LogLevel): LogLevel {
  if (raw === undefined || raw === '') return fallback;
  if (!(logLevels as readonly string[]).includes(raw)) {
    throw new ValidationError(
      `TALLY_LOG_LEVEL must be one of ${logLevels.join(', ')}, got ${JSON.stringify(raw)}.`,
    );
  }
  return raw as LogLevel;
}

/** `TALLY_LOG_FORMAT`: lines for people on a terminal, JSON for log collectors. */
export type LogFormat = 'json' | 'pretty';

export function parseLogFormat(raw: string | undefined): LogFormat | undefined {
  if (raw === undefined || raw === '') return undefined;
  if (raw !== 'json' && raw !== 'pretty') {
    throw new ValidationError(
      `TALLY_LOG_FORMAT must be json or pretty, got ${JSON.stringify(raw)}.`,
    );
  }
  return raw;
}

/**
 * `scheme://user:password@` → `scheme://user:***@` (up to the last `@` before the host, so a
 * password holding a raw `@` goes whole); `?password=…` and the like → `?password=***`; a
 * bearer credential → `Bearer ***`.
 */
export function redactSecrets(text: string): string {
  return text
    .replace(/([a-z][a-z0-9+.-]*:\/\/[^:/?#@\s]*):[^/?#\s]*@/gi, '$1:***@')
    .replace(/([?&;](?:[a-z_]*password|passwd|pass|pwd|token|secret|auth)=)[^&;#\s"']*/gi, '$1***')
    .replace(/\b(bearer)\s+[^\s"',]+/gi, '$1 ***');
}

/** Redis commands whose arguments carry credentials (ioredis puts them in its errors). */
const credentialCommands = new Set(['auth', 'hello', 'migrate']);

/**
 * A copy of a log value with secrets taken out: strings are redacted, and the arguments of
 * AUTH / HELLO in an ioredis error's `command` are replaced. (A refused Redis password was
 * logged as `"args":["3","AUTH","u","hunter2pass"]`.)
 */
function scrub(value: unknown, depth = 0): unknown {
  if (typeof value === 'string') return redactSecrets(value);
  // An error's message, stack and cause are not enumerable: serialise it first.
  if (value instanceof Error) return scrub(stdSerializers.err(value), depth);
  if (typeof value !== 'object' || value === null) return value;
  // Deeper than any log field Tally writes: dropped rather than logged unredacted.
  if (depth > 8) return '[nested too deep]';
  if (Array.isArray(value)) return value.map((item) => scrub(item, depth + 1));
  const copy: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) copy[key] = scrub(item, depth + 1);
  const command: unknown = copy.command;
  if (
    typeof command === 'object' &&
    command !== null &&
    'name' in command &&
    typeof command.name === 'string' &&
    credentialCommands.has(command.name.toLowerCase())
  ) {
    copy.command = { ...command, args: '[redacted]' };
  }
  return copy;
}

export interface LoggerOptions {
  level: LogLevel;
  /** File descriptor the lines go to: 1 for the services, 2 for CLI commands. */
  fd?: 1 | 2;
  /** Default: pretty on a terminal, JSON otherwise. */
  format?: LogFormat | undefined;
  /** JSON lines go here instead of `fd` (a log shipper's stream). */
  destination?: { write(line: string): void };
}

/**
 * Every process's logger: secrets redacted from every line (messages, errors and their causes,
 * any field), readable lines on a terminal and JSON elsewhere.
 */
export function createLogger(options: LoggerOptions): Logger {
  const fd = options.fd ?? 1;
  const format =
    options.format ?? (process[fd === 1 ? 'stdout' : 'stderr'].isTTY ? 'pretty' : 'json');
  const settings = {
    level: options.level,
    // `formatters.log` sees the fields first and serialises errors; the serializer then gets
    // what it made, or an error logged in another field's place.
    serializers: { err: (error: unknown) => scrub(error) },
    formatters: {
      log: (object: Record<string, unknown>) => scrub(object) as Record<string, unknown>,
    },
    hooks: {
      logMethod(this: Logger, args: unknown[], method: (...args: unknown[]) => void) {
        method.apply(
          this,
          args.map((arg) => (typeof arg === 'string' ? redactSecrets(arg) : arg)),
        );
      },
    },
  };
  if (format === 'json') {
    return pino(settings, options.destination ?? pino.destination({ fd, sync: fd === 2 }));
  }
  return pino(
    settings,
    pinoPretty({
      destination: fd,
      sync: true,
      ignore: 'pid,hostname',
      translateTime: 'SYS:HH:MM:ss.l',
    }),
  );
}
