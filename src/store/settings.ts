import type pg from 'pg';
import { TallyError } from '../errors.js';
import { settingsSql } from './sql.js';
import { withTransaction } from './transaction.js';

/** What a process must agree on with the store: the settings recorded at its set-up. */
const identity = [
  {
    key: 'shards',
    option: 'shards',
    env: 'TALLY_SHARDS',
    describe: (value: unknown) => `${String(value)} shards`,
    why: 'counters would be routed to other shards and totals and flushes would split',
  },
  {
    key: 'key_prefix',
    option: 'keyPrefix',
    env: 'TALLY_KEY_PREFIX',
    describe: (value: unknown) => `key prefix ${JSON.stringify(value)}`,
    why: 'Redis would hold a second, empty set of totals (reported as a Redis loss of every shard)',
  },
] as const;

/**
 * Records the shard count and the Redis key prefix when the store is first set up (or, for a
 * store set up before the prefix was recorded, when a process first starts on it) and refuses
 * a process configured otherwise.
 */
export async function ensureStoreIdentity(
  pool: pg.Pool,
  config: { shards: number; keyPrefix: string },
): Promise<void> {
  for (const { key, option, env, describe, why } of identity) {
    const configured: unknown = config[option];
    await pool.query(settingsSql.recordIfAbsent, [key, JSON.stringify(configured)]);
    const { rows } = await pool.query<{ value: unknown }>(settingsSql.read, [key]);
    const recorded = rows[0]?.value;
    if (recorded !== configured) {
      throw new TallyError(
        'CONFIGURATION',
        `This store was set up with ${describe(recorded)} but this process is configured with ` +
          `${describe(configured)}: set ${option} (${env}) to ${JSON.stringify(recorded)}. It ` +
          `cannot change: ${why}.`,
      );
    }
  }
}

/**
 * Whether Redis ever held this store's totals. A shard without its epoch marker in a store
 * that was set up means Redis lost its data; in a new store it only means first start.
 */
export async function storeWasSetUp(pool: pg.Pool): Promise<boolean> {
  const { rowCount } = await pool.query(settingsSql.wasSetUp);
  return rowCount === 1;
}

export async function markStoreSetUp(pool: pg.Pool): Promise<void> {
  await pool.query(settingsSql.markSetUp);
}

/**
 * Records which granularities the store keeps. One that a process keeps and the record lacks
 * was added now: its buckets hold nothing from before, so the reads of earlier periods from
 * it are refused (the pruning horizon moves to now), not answered with a silent 0. Returns the
 * granularities added.
 */
export async function recordKeptGranularities(
  pool: pg.Pool,
  buckets: readonly string[],
): Promise<string[]> {
  return withTransaction(pool, async (client) => {
    await client.query(settingsSql.lockGranularities);
    const { rows } = await client.query<{ g: string }>(settingsSql.recordGranularities, [
      JSON.stringify([...buckets].sort()),
    ]);
    return rows.map((row) => row.g);
  });
}
