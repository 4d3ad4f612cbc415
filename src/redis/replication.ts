import type { ChainableCommander } from 'ioredis';
import type { RedisConnection } from './scripts.js';

/**
 * Commands in one pipeline on the server of `routeKey`: a read of that key goes first, so that
 * a cluster sends the pipeline to the node of its slot, on the connection every other command
 * to that node uses. Keyless commands (INFO, WAIT, WAITAOF) need it: WAIT and WAITAOF count the
 * writes of the connection they run on. Returns each command's [error, reply].
 */
export async function onServerOf(
  redis: RedisConnection,
  routeKey: string,
  build: (pipeline: ChainableCommander) => void,
): Promise<[Error | null, unknown][]> {
  const pipeline = redis.pipeline().exists(routeKey);
  build(pipeline);
  const [route, ...results] = (await pipeline.exec()) ?? [];
  if (route?.[0]) throw route[0];
  return results;
}

/**
 * The replicas of the server of `key` that are online (INFO replication `state=online`): those a
 * failover may promote and that acknowledge WAIT. One still loading its first copy is not.
 */
export async function onlineReplicas(redis: RedisConnection, key: string): Promise<number> {
  const [[error, info] = [null, '']] = await onServerOf(redis, key, (pipeline) => {
    pipeline.call('INFO', 'replication');
  });
  if (error) throw error;
  return String(info)
    .split('\n')
    .filter((line) => /^slave\d+:.*\bstate=online\b/.test(line)).length;
}
