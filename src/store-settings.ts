import type pg from 'pg';
import { TallyError } from './errors.js';

/**
 * Records the shard count when the store is first set up and refuses a process configured with
 * another: counters would be routed to two shards and totals and flushes would split.
 */
export async function ensureShardCount(pool: pg.Pool, shards: number): Promise<void> {
  await pool.query(
    `INSERT INTO tally.settings (key, value) VALUES ('shards', $1::jsonb) ON CONFLICT DO NOTHING`,
    [JSON.stringify(shards)],
  );
  const { rows } = await pool.query<{ value: unknown }>(
    `SELECT value FROM tally.settings WHERE key = 'shards'`,
  );
  const recorded = rows[0]?.value;
  if (recorded !== shards) {
    throw new TallyError(
      'CONFIGURATION',
      `This store was set up with ${String(recorded)} shards but this process is configured ` +
        `with ${shards}: set shards: ${String(recorded)}. The shard count cannot change.`,
    );
  }
}

/**
 * Whether Redis ever held this store's totals. A shard without its epoch marker in a store
 * that was set up means Redis lost its data; in a new store it only means first start.
 */
export async function storeWasSetUp(pool: pg.Pool): Promise<boolean> {
  const { rowCount } = await pool.query(`SELECT 1 FROM tally.settings WHERE key = 'set_up_at'`);
  return rowCount === 1;
}

export async function markStoreSetUp(pool: pg.Pool): Promise<void> {
  await pool.query(
    `INSERT INTO tally.settings (key, value) VALUES ('set_up_at', to_jsonb(now()))
     ON CONFLICT DO NOTHING`,
  );
}
