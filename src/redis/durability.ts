import { Cluster, Redis as RedisServer, type Redis, type RedisOptions } from 'ioredis';
import type { RedisConnection } from './scripts.js';

/** What Redis' configuration means for increments acknowledged but not yet flushed. */
export interface RedisDurability {
  appendonly: boolean;
  /** 'always' | 'everysec' | 'no', or 'unknown' where CONFIG is disabled. */
  appendfsync: string;
  maxmemoryPolicy: string;
  redisVersion: string;
  /** WAITAOF exists (Redis ≥ 7.2) and AOF is on: a flush waits for its snapshot to be fsynced. */
  waitaof: boolean;
  /** True only when no crash of Redis can lose an acknowledged increment. */
  durable: boolean;
  /** Keys Redis has evicted since it started (INFO evicted_keys): any is a lost delta or key. */
  evictedKeys: number;
  /** These settings are accepted by the process's `redisLossAccepted`. */
  accepted: boolean;
  /** Why they are not (null when accepted). */
  problem: string | null;
  /** The loss bound, in words, for logs, /readyz and `tally status`. */
  lossBound: string;
  /**
   * The servers read: 1, or every primary and replica of a cluster that answered. A cluster is
   * judged by its weakest node, since a failover can promote any replica.
   */
  servers: number;
}

function infoField(info: string, field: string): string | undefined {
  return new RegExp(`^${field}:(.*)$`, 'm').exec(info)?.[1]?.trim();
}

async function configValue(redis: Redis, name: string): Promise<string | undefined> {
  try {
    const reply = await redis.config('GET', name);
    return reply[1];
  } catch {
    return undefined; // CONFIG is often renamed or disabled on managed Redis
  }
}

function atLeast(version: string, major: number, minor: number): boolean {
  const [a = 0, b = 0] = version.split('.').map(Number);
  return a > major || (a === major && b >= minor);
}

/**
 * Reads Redis' persistence and eviction settings, and judges them under `accepted`: of the one
 * server, or of every node of a cluster (the weakest decides; evictions are summed).
 */
export async function inspectRedisDurability(
  redis: RedisConnection,
  accepted: RedisLossAccepted,
): Promise<RedisDurability> {
  if (!(redis instanceof Cluster)) return inspectServer(redis, accepted);
  const replicas = await replicaConnections(redis);
  const settled = await Promise.allSettled(
    [...redis.nodes('master'), ...replicas].map((node) => inspectServer(node, accepted)),
  );
  for (const replica of replicas) replica.disconnect();
  const reports = settled.flatMap((result) =>
    result.status === 'fulfilled' ? [result.value] : [],
  );
  const weakest =
    reports.find((report) => report.problem !== null) ??
    reports.find((report) => !report.durable) ??
    reports[0];
  if (weakest === undefined) {
    const failure = settled.find((result) => result.status === 'rejected');
    throw failure?.reason ?? new Error('the cluster has no node to read');
  }
  return {
    ...weakest,
    waitaof: reports.every((report) => report.waitaof),
    evictedKeys: reports.reduce((sum, report) => sum + report.evictedKeys, 0),
    servers: reports.length,
  };
}

/**
 * Short-lived connections to the cluster's replicas, which ioredis does not connect to while it
 * reads from primaries only: from CLUSTER NODES, with the cluster's own per-node options.
 */
async function replicaConnections(cluster: Cluster): Promise<Redis[]> {
  // (ioredis' option type cannot be passed back to it as it is under exactOptionalPropertyTypes.)
  const nodeOptions = cluster.options.redisOptions as Omit<RedisOptions, 'replyMapping'>;
  const nodes = String(await cluster.cluster('NODES'));
  return nodes
    .split('\n')
    .map((line) => line.split(' '))
    .filter(([, , flags = '']) => /\bslave\b/.test(flags) && !/fail|noaddr|handshake/.test(flags))
    .flatMap(([, address = '']) => {
      const match = /^(.*):(\d+)@/.exec(address);
      if (match?.[1] === undefined) return [];
      const replica = new RedisServer({
        ...nodeOptions,
        host: match[1],
        port: Number(match[2]),
        retryStrategy: () => null,
        maxRetriesPerRequest: 0,
      });
      // A replica that cannot be reached fails its own read, reported by the caller.
      replica.on('error', () => undefined);
      return [replica];
    });
}

async function inspectServer(redis: Redis, accepted: RedisLossAccepted): Promise<RedisDurability> {
  const info = await redis.info();
  const appendonly = infoField(info, 'aof_enabled') === '1';
  const appendfsync = (await configValue(redis, 'appendfsync')) ?? 'unknown';
  const maxmemoryPolicy = infoField(info, 'maxmemory_policy') ?? 'unknown';
  const redisVersion = infoField(info, 'redis_version') ?? '0';
  const evictionSafe = maxmemoryPolicy === 'noeviction';
  const durable = appendonly && appendfsync === 'always' && evictionSafe;

  let lossBound: string;
  if (!appendonly) {
    lossBound =
      'no AOF: a Redis restart loses every increment not yet flushed (up to one flush interval)';
  } else if (appendfsync === 'always') {
    lossBound = 'none: AOF with appendfsync always keeps every acknowledged increment';
  } else if (appendfsync === 'everysec') {
    lossBound =
      'about 2 s of acknowledged increments on a crash of Redis or its machine ' +
      '(appendfsync everysec acknowledges before writing the AOF while an fsync is running)';
  } else {
    lossBound = `AOF with appendfsync ${appendfsync}: a machine crash loses what the OS had not written`;
  }
  if (!evictionSafe) {
    lossBound +=
      `; maxmemory-policy ${maxmemoryPolicy} may evict pending deltas or idempotency keys ` +
      '(use noeviction)';
  }
  const settings = { maxmemoryPolicy, durable, lossBound };
  const problem = durabilityProblem(settings, accepted) ?? null;
  return {
    appendonly,
    appendfsync,
    maxmemoryPolicy,
    redisVersion,
    waitaof: appendonly && atLeast(redisVersion, 7, 2),
    durable,
    evictedKeys: Number(infoField(info, 'evicted_keys') ?? 0),
    accepted: problem === null,
    problem,
    lossBound,
    servers: 1,
  };
}

/** Which Redis settings a process accepts (TallyOptions.redisLossAccepted). */
export type RedisLossAccepted = 'none' | 'bounded' | 'any';

/**
 * Why `durability` is not accepted under `accepted`, or undefined when it is. Eviction is
 * refused unless 'any': it does not lose a window of increments but corrupts counts (an evicted
 * idempotency key counts a retry twice; an evicted pending delta is never flushed).
 */
function durabilityProblem(
  durability: Pick<RedisDurability, 'maxmemoryPolicy' | 'durable' | 'lossBound'>,
  accepted: RedisLossAccepted,
): string | undefined {
  if (accepted === 'any') return undefined;
  if (durability.maxmemoryPolicy !== 'noeviction') {
    return (
      `maxmemory-policy is ${durability.maxmemoryPolicy}: Redis may evict idempotency keys and ` +
      'pending deltas (set maxmemory-policy noeviction)'
    );
  }
  if (accepted === 'none' && !durability.durable) {
    return `Redis could lose acknowledged increments (${durability.lossBound}); set appendonly yes and appendfsync always`;
  }
  return undefined;
}
