import type { RedisConnection } from './redis-scripts.js';

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
  /** The loss bound, in words, for logs, /readyz and `tally status`. */
  lossBound: string;
}

function infoField(info: string, field: string): string | undefined {
  return new RegExp(`^${field}:(.*)$`, 'm').exec(info)?.[1]?.trim();
}

async function configValue(redis: RedisConnection, name: string): Promise<string | undefined> {
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

export async function inspectRedisDurability(redis: RedisConnection): Promise<RedisDurability> {
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
  return {
    appendonly,
    appendfsync,
    maxmemoryPolicy,
    redisVersion,
    waitaof: appendonly && atLeast(redisVersion, 7, 2),
    durable,
    lossBound,
  };
}
