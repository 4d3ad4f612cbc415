import type pg from 'pg';
import type { ResolvedConfig } from '../config.js';
import type { RedisDurability } from '../redis/durability.js';
import type { RedisConnection, Scripts } from '../redis/scripts.js';

/**
 * What the engine's paths (increments, reads, usage, flush, reconcile) share: the two stores'
 * connections, the resolved configuration, Redis' durability as last read, and the counts a
 * process keeps about itself. One per Tally client.
 */
export interface EngineContext {
  redis: RedisConnection;
  scripts: Scripts;
  pool: pg.Pool;
  config: ResolvedConfig;
  /** Replaced when the durability is read again (Tally.durability). */
  durability: RedisDurability;
  stats: { lockRenewalFailures: number };
}
