import type pg from 'pg';
import { onTestFinished } from 'vitest';
import { waitFor } from './wait-for.js';

/**
 * Makes this process' usage queries stop for `ms` after taking their PostgreSQL snapshot
 * (the fault point `query-after-snapshot`), until the test ends; then waits until one holds
 * its snapshot on `pool`'s database, so the test can change the store under it.
 */
export function pauseQueriesAfterSnapshot(ms: number): { held: (pool: pg.Pool) => Promise<void> } {
  const before = process.env.TALLY_FAULT_DELAY;
  process.env.TALLY_FAULT_DELAY = `query-after-snapshot:${ms}`;
  onTestFinished(() => {
    if (before === undefined) delete process.env.TALLY_FAULT_DELAY;
    else process.env.TALLY_FAULT_DELAY = before;
  });
  return {
    held: async (pool) => {
      await waitFor('a query to hold its snapshot', async () => {
        const { rows } = await pool.query<{ held: boolean }>(
          `SELECT count(*) > 0 AS held FROM pg_stat_activity
           WHERE datname = current_database() AND state = 'idle in transaction'
             AND query LIKE 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;%'`,
        );
        return rows[0]?.held === true ? true : undefined;
      });
    },
  };
}
