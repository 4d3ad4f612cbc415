import { Cluster, Redis, ReplyError } from 'ioredis';
import type { Logger } from 'pino';
import { TallyError } from '../errors.js';
import { connectRedis, parseRedisUrl } from './redis-url.js';
import { scriptCommand, scriptCommands, type RedisConnection } from './scripts.js';

/**
 * Options Tally needs on its Redis connection, whoever created it:
 * - ioredis re-sends, after a reconnect, commands whose replies were lost, and Redis then applies
 *   an increment twice. Tally turns that off; a lost reply becomes OUTCOME_UNKNOWN, which
 *   increments with an idempotency key retry safely.
 * - A command timeout bounds how long a caller waits on a Redis that stopped answering.
 */
function safeRedisOptions(commandTimeoutMs: number) {
  return {
    autoResendUnfulfilledCommands: false,
    commandTimeout: commandTimeoutMs,
    reconnectOnError: demotedPrimary,
    ...pipelining,
  };
}

/**
 * A primary that became a replica (a Sentinel failover, a managed Redis' DNS flip) answers
 * writes with READONLY: nothing was applied, and the connection is reconnected so that it finds
 * the new primary. The call itself fails (UNAVAILABLE), it is not re-sent.
 */
function demotedPrimary(error: Error): boolean {
  return error.message.startsWith('READONLY');
}

/**
 * Auto-pipelining batches the many small reads, but not increments: ioredis keeps one
 * auto-pipeline in flight per connection and holds every later command until all of its replies
 * are in, so Redis applied one group while Node waited, then Node settled it while Redis waited
 * (Node's event loop was busy 73–77 % of the time at 10,000 increments in flight, Redis 33 %).
 * Increments are batched by group commit already; written at once, Redis applies one group
 * while Node settles the previous one (event loop busy 100 %; in four A/B pairs 1–29 % more
 * increments a second, median 22 %; per call 21–26 % more).
 */
const pipelining = {
  enableAutoPipelining: true,
  autoPipeliningIgnoredCommands: [scriptCommand('increment')],
};

/**
 * A cluster's own re-sending: ioredis re-sends a command whose node connection closed
 * (retryDelayOnFailover), though the dead primary may have applied it and replicated it first.
 * Off, as autoResendUnfulfilledCommands is on every node: OUTCOME_UNKNOWN instead. Redirections
 * (MOVED, ASK), TRYAGAIN and CLUSTERDOWN are still followed: those replies mean not applied.
 *
 * No script is auto-pipelined on a cluster: ioredis routes an auto-pipelined command by its
 * first argument, which for a script of Tally's is its key count, not a key, and the pipeline
 * then fails ("All keys in the pipeline should belong to the same slots allocation group").
 */
const clusterSafeOptions = {
  retryDelayOnFailover: 0,
  // Every command on the primaries: WAIT and INFO go with a read of a shard key (replication.ts)
  // and must reach the primary that wrote, not a replica a caller's own Cluster reads from.
  scaleReads: 'master',
  // A MOVED seen in a pipeline refreshes nothing (ioredis refreshes on its own commands only):
  // the slot map is read again every 5 s, whatever happened.
  slotsRefreshInterval: 5_000,
  enableAutoPipelining: true,
  autoPipeliningIgnoredCommands: scriptCommands(),
} as const;

/**
 * Runs `send`, whose commands then leave in one write rather than a TCP segment each (ioredis
 * turns Nagle's algorithm off): the group commit's calls for every shard of a turn. A cluster's
 * commands go to several nodes, so there they leave as they come.
 */
export function inOneWrite(redis: RedisConnection, send: () => void): void {
  // Undefined before the first connection; a socket being replaced only holds what it gets.
  const stream =
    redis instanceof Cluster ? undefined : (redis.stream as Redis['stream'] | undefined);
  stream?.cork();
  try {
    send();
  } finally {
    stream?.uncork();
  }
}

/** Tally's own Redis connection: from a URL, or a duplicate of the caller's instance. */
export function openRedis(
  option: string | Redis | Cluster,
  commandTimeoutMs: number,
  logger: Logger,
): RedisConnection {
  const options = safeRedisOptions(commandTimeoutMs);
  let redis: RedisConnection;
  if (typeof option === 'string') {
    redis = connectRedis(parseRedisUrl(option), options, clusterSafeOptions);
  } else if (option instanceof Cluster) {
    // The cluster's per-node options with Tally's on top. (The cast works around ioredis'
    // option types under exactOptionalPropertyTypes.)
    const overrides = {
      ...clusterSafeOptions,
      redisOptions: { ...option.options.redisOptions, ...options },
    } as Parameters<Cluster['duplicate']>[1];
    redis = option.duplicate(undefined, overrides);
  } else redis = option.duplicate(options);
  logConnectionErrors(redis, logger, 'redis');
  return redis;
}

/**
 * Logs a connection's errors: the first of an outage at warn, the repeats of every reconnect
 * attempt at debug, and the return at info (an outage was a stack every two seconds). Without
 * a listener ioredis would print them on stderr; the failing calls report them to their callers.
 */
export function logConnectionErrors(redis: RedisConnection, logger: Logger, name: string): void {
  let failing = false;
  redis.on('error', (error: Error) => {
    if (failing) {
      logger.debug({ err: error }, `${name} connection error (again)`);
      return;
    }
    failing = true;
    // The message, not the stack: a refused connection has nothing more to say, and the
    // stack (at debug, with the repeats) is one of ioredis' internals.
    const { code } = error as NodeJS.ErrnoException;
    logger.warn(
      { error: error.message, ...(code === undefined ? {} : { code }) },
      `${name} connection error; retrying (repeats logged at debug)`,
    );
  });
  redis.on('ready', () => {
    if (failing) logger.info(`${name} connection back`);
    failing = false;
  });
}

function isOutOfMemory(error: unknown): boolean {
  return error instanceof ReplyError && (error as Error).message.startsWith('OOM');
}

/**
 * The typed error for a failed Redis call. A reply from Redis itself (such as OOM) means the
 * command did not run; any other failure after the call was issued (timeout, connection lost)
 * leaves a write's outcome unknown.
 */
export function redisFailure(error: unknown, kind: 'write' | 'read', what: string): TallyError {
  if (error instanceof TallyError) return error;
  if (isOutOfMemory(error)) {
    return new TallyError(
      'UNAVAILABLE',
      `Redis is out of memory and refused ${what}; nothing was applied. Raise maxmemory or ` +
        'flush more often.',
      { cause: error },
    );
  }
  if (kind === 'read' || error instanceof ReplyError) {
    return new TallyError('UNAVAILABLE', `Redis could not serve ${what}.`, { cause: error });
  }
  return new TallyError(
    'OUTCOME_UNKNOWN',
    `Redis did not answer ${what}: it may or may not have been applied. Retry with the same ` +
      'idempotency key to count it exactly once.',
    { cause: error },
  );
}
