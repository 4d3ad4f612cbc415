import type { RedisDurability } from '../redis/durability.js';
import type { Drift } from './reconciler.js';

/** One explanation of what a reconcile found, for people and for scripts (`--json`). */
export interface Explanation {
  cause: 'redis-evicted' | 'redis-lost-data' | 'postgres-behind' | 'unexplained-drift';
  detail: string;
}

/**
 * Says which cause fits what the reconcile saw, instead of one guess. Evictions leave their
 * count in INFO (`evicted_keys`): with any, a Redis total ahead of PostgreSQL + deltas is a
 * pending delta evicted before it was flushed (once blamed on a PostgreSQL restore), a total
 * missing or behind is an evicted total, and a retry may have been counted twice (its
 * idempotency key evicted). Without evictions, a missing epoch marker is a lost dataset and
 * Redis ahead is PostgreSQL restored from an older backup.
 */
export function explainReconcile(found: {
  drift: readonly Drift[];
  redisLostData: readonly number[];
  durability: RedisDurability;
}): Explanation[] {
  const { drift, redisLostData, durability } = found;
  const ahead = drift.filter((d) => (d.redisValue ?? 0) > d.expectedValue);
  const behind = drift.filter((d) => (d.redisValue ?? 0) < d.expectedValue);
  const explanations: Explanation[] = [];
  if (durability.evictedKeys > 0) {
    explanations.push({
      cause: 'redis-evicted',
      detail:
        `Redis evicted ${durability.evictedKeys} keys since it started (maxmemory-policy ` +
        `${durability.maxmemoryPolicy}): ` +
        [
          ahead.length > 0
            ? `${ahead.length} counters are ahead of PostgreSQL because their pending deltas were evicted before a flush (those increments are not in PostgreSQL)`
            : undefined,
          behind.length > 0 || redisLostData.length > 0
            ? 'evicted totals or epoch markers make Redis look behind or empty'
            : undefined,
          'an evicted idempotency key lets a retry count twice',
        ]
          .filter((part) => part !== undefined)
          .join('; ') +
        '. Set maxmemory-policy noeviction.',
    });
    return explanations;
  }
  if (redisLostData.length > 0) {
    explanations.push({
      cause: 'redis-lost-data',
      detail:
        `Redis lost its dataset on shards ${redisLostData.join(', ')} (a restart without ` +
        'persistence, a failover to an empty replica, a FLUSHALL): increments not flushed ' +
        'before the loss are gone.',
    });
  }
  if (ahead.length > 0) {
    explanations.push({
      cause: 'postgres-behind',
      detail:
        `${ahead.length} counters are ahead in Redis and nothing was evicted: PostgreSQL lost ` +
        'applied batches (restored from an older backup?); --repair realigns Redis to it.',
    });
  }
  if (behind.length > 0 && redisLostData.length === 0) {
    explanations.push({
      cause: 'unexplained-drift',
      detail:
        `${behind.length} counters are behind in Redis with their shard's data present and ` +
        'nothing evicted: something other than Tally wrote to its keys.',
    });
  }
  return explanations;
}
