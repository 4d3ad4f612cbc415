import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { TallyError } from './errors.js';
import type { RedisConnection, Scripts } from './redis-scripts.js';

/**
 * The per-shard lock that keeps a flush and a reconcile of one shard apart. Correctness of the
 * flush does not rest on it (the ledger makes a batch apply once even if two flushes race, for
 * example after a pause past the TTL); it saves duplicate work and gives reconcile a still
 * PostgreSQL to compare against.
 */
export interface HeldLock {
  release(): Promise<void>;
}

export async function acquireFlushLock(
  redis: RedisConnection,
  scripts: Scripts,
  key: string,
  ttlMs: number,
  waitMs: number,
): Promise<HeldLock> {
  const token = randomUUID();
  const deadline = Date.now() + waitMs;
  for (let delayMs = 5; ; delayMs = Math.min(delayMs * 2, 200)) {
    if ((await redis.set(key, token, 'PX', ttlMs, 'NX')) === 'OK') {
      return {
        release: async () => {
          await scripts.run('releaseLock', [key], [token]);
        },
      };
    }
    if (Date.now() >= deadline) {
      throw new TallyError(
        'UNAVAILABLE',
        `Shard lock ${key} is held by another flush or reconcile; try again later.`,
      );
    }
    await sleep(delayMs);
  }
}
