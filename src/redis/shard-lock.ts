import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { TallyError } from '../errors.js';
import type { RedisConnection, Scripts } from './scripts.js';

/**
 * The per-shard lock that keeps a flush and a reconcile of one shard apart. Correctness of the
 * flush does not rest on it (the ledger makes a batch apply once even if two flushes race, for
 * example after a pause past the TTL); it saves duplicate work and gives reconcile a still
 * PostgreSQL to compare against. The holder renews it every third of the TTL.
 */
interface LockContext {
  redis: RedisConnection;
  scripts: Scripts;
  config: { flushLockTtlMs: number; logger: Logger };
  /** Counts what went wrong with the locks this process held (Tally.lockRenewalFailures). */
  stats: { lockRenewalFailures: number };
}

/**
 * Runs `work` holding the shard's lock (`lockKey`), waiting up to `waitMs` (default: one TTL,
 * long enough for a crashed holder's lock to expire) for a holder to finish. Throws BUSY when
 * the lock stays taken.
 */
export async function withShardLock<T>(
  ctx: LockContext,
  lockKey: string,
  /** Gets the lock's token, for the scripts that check it is still held. */
  work: (token: string) => Promise<T>,
  waitMs: number = ctx.config.flushLockTtlMs,
): Promise<T> {
  const ttlMs = ctx.config.flushLockTtlMs;
  const token = randomUUID();
  const deadline = Date.now() + waitMs;
  for (let delayMs = 5; (await ctx.redis.set(lockKey, token, 'PX', ttlMs, 'NX')) !== 'OK';) {
    if (Date.now() >= deadline) {
      throw new TallyError(
        'BUSY',
        `Shard lock ${lockKey} is held by another flush or reconcile; try again later.`,
      );
    }
    await sleep(delayMs);
    delayMs = Math.min(delayMs * 2, 200);
  }
  // Renewed while the work runs, so a long flush keeps its shard. Only a process that stops
  // running (paused, partitioned) loses the lock after one TTL.
  // A renewal that fails is not fatal (the ledger keeps a racing flush exact), but it means
  // another process may now flush or reconcile the shard beside this one: say so.
  const renewalFailed = (reason: string) => {
    ctx.stats.lockRenewalFailures++;
    ctx.config.logger.warn({ lockKey, reason }, 'shard lock renewal failed');
  };
  const renew = setInterval(() => {
    ctx.scripts.extendLock(lockKey, token, ttlMs).then(
      (extended) => {
        if (!extended) renewalFailed('the lock expired or passed to another process');
      },
      (error: unknown) => {
        renewalFailed(error instanceof Error ? error.message : String(error));
      },
    );
  }, ttlMs / 3);
  renew.unref();
  try {
    return await work(token);
  } finally {
    clearInterval(renew);
    await ctx.scripts.releaseLock(lockKey, token);
  }
}
