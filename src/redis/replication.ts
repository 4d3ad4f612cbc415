import { TallyError } from '../errors.js';
import type { RedisConnection } from './scripts.js';

/**
 * Keyless commands (INFO, WAIT, WAITAOF) on the connection that serves `key`: on a cluster the
 * node holding its slot. WAIT and WAITAOF count the writes of the connection they run on, so
 * they must follow the writes on that same connection; a pipeline whose only keyed command
 * names `key` goes there, on the connection every other command to that node uses.
 */
async function onServerOf(
  redis: RedisConnection,
  key: string,
  command: string,
  ...args: (string | number)[]
): Promise<unknown> {
  const results = await redis
    .pipeline()
    .exists(key)
    .call(command, ...args)
    .exec();
  for (const [error] of results ?? []) if (error) throw error;
  return results?.[1]?.[1];
}

/**
 * The replicas of the server of `key` that are online (INFO replication `state=online`): those a
 * failover may promote and that acknowledge WAIT. One still loading its first copy is not.
 */
export async function onlineReplicas(redis: RedisConnection, key: string): Promise<number> {
  const info = String(await onServerOf(redis, key, 'INFO', 'replication'));
  return info.split('\n').filter((line) => /^slave\d+:.*\bstate=online\b/.test(line)).length;
}

/**
 * Waits until `replicas` replicas of the server of `key` hold every write this connection made
 * there; throws UNAVAILABLE when fewer did within `timeoutMs`. (Redis: WAIT makes a write
 * survive a failover that promotes one of them, not a crash of all of them before they fsync.)
 */
export async function waitForReplicas(
  redis: RedisConnection,
  key: string,
  replicas: number,
  timeoutMs: number,
  what: string,
): Promise<void> {
  if (replicas === 0) return;
  const acknowledged = Number(await onServerOf(redis, key, 'WAIT', replicas, timeoutMs));
  if (acknowledged < replicas) {
    throw new TallyError(
      'UNAVAILABLE',
      `${acknowledged} of ${replicas} Redis replicas confirmed ${what} within ${timeoutMs} ms.`,
    );
  }
}

/** Waits until the server of `key` has fsynced this connection's writes to its AOF. */
export async function waitForLocalAof(
  redis: RedisConnection,
  key: string,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const [local] = (await onServerOf(redis, key, 'WAITAOF', 1, 0, timeoutMs)) as [number, number];
  if (local < 1) {
    throw new TallyError('UNAVAILABLE', `Redis did not fsync ${what} within ${timeoutMs} ms.`);
  }
}
