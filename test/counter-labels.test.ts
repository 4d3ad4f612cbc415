/**
 * Migration 0005: the store keeps each counter's base name and labels (tally.counter_labels),
 * written by a trigger when a counter is first inserted, and back-filled for the counters the
 * store had before it.
 */
import fc from 'fast-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canonicalName, parseCounterName } from '../src/counters/counter-name.js';
import { loadMigrations, migrate } from '../src/index.js';
import { aNameLikeLabelled } from './support/arbitraries.js';
import { createDatabase, startRedis, type RedisHandle } from './support/index.js';
import { tallyOn } from './support/tally-store.js';

let redis: RedisHandle;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});

async function labelRows(pool: pg.Pool) {
  const { rows } = await pool.query<{ name: string; base: string | null; labels: unknown }>(
    'SELECT name, base, labels FROM tally.counter_labels ORDER BY name',
  );
  return rows;
}

/** The totals upsert of the versions from migration 0005 to 0006 (older code in a rolling deploy). */
const olderAddToTotals = `INSERT INTO tally.counters AS c (name, shard, value)
  SELECT name, $3, delta FROM unnest($1::text[], $2::bigint[]) AS d (name, delta)
  ON CONFLICT (name) DO UPDATE SET value = c.value + EXCLUDED.value, updated_at = now()`;

describe('counter labels in the store', () => {
  it('parses names in SQL exactly as parseCounterName does', async () => {
    const url = await createDatabase();
    await migrate(url);
    const pool = new pg.Pool({ connectionString: url, max: 1 });
    try {
      await fc.assert(
        fc.asyncProperty(
          fc.array(aNameLikeLabelled, { minLength: 1, maxLength: 30 }),
          async (names) => {
            const raws = names.map((name) =>
              'raw' in name ? name.raw : canonicalName({ name: name.base, labels: name.labels }),
            );
            const { rows } = await pool.query<{
              base: string | null;
              labels: Record<string, string> | null;
            }>(
              'SELECT p.base, p.labels FROM unnest($1::text[]) WITH ORDINALITY AS n(name, i), ' +
                'tally.parse_counter_name(n.name) AS p ORDER BY n.i',
              [raws],
            );
            expect(
              rows.map((row, i) =>
                row.labels === null ? { base: raws[i], labels: undefined } : row,
              ),
            ).toEqual(raws.map((raw) => parseCounterName(raw)));
          },
        ),
        { numRuns: 60 },
      );
    } finally {
      await pool.end();
    }
  });

  it('back-fills the counters the store had, and lets older code flush through the migration', async () => {
    const url = await createDatabase();
    const shipped = await loadMigrations();
    await migrate(url, { migrations: shipped.filter((migration) => migration.version < 5) });
    const pool = new pg.Pool({ connectionString: url, max: 8 });
    // What a flush of the code before migration 0007 sends: totals upserted (this code's
    // statement also skips tombstones, a table that version has not).
    const olderFlush = (names: string[]) =>
      pool.query({ text: olderAddToTotals, values: [names, names.map(() => '1'), 0] });
    try {
      await olderFlush([
        canonicalName({ name: 'api_calls', labels: { tenant: 'acme' } }),
        'plain:one',
      ]);
      const during: Promise<unknown>[] = [];
      for (let round = 0; round < 30; round++) {
        during.push(
          olderFlush([canonicalName({ name: 'calls', labels: { n: round } }), 'plain:one']),
        );
        if (round === 10) during.push(migrate(url, { migrations: shipped }));
      }
      await Promise.all(during);
      // Older code's flush after the migration: the trigger, not the back-fill, records it.
      await olderFlush([canonicalName({ name: 'calls', labels: { n: 'late' } })]);
      const rows = await labelRows(pool);
      expect(rows.slice(0, 1)).toEqual([
        { name: 'api_calls{tenant="acme"}', base: 'api_calls', labels: { tenant: 'acme' } },
      ]);
      expect(rows.filter((row) => row.base === 'calls')).toHaveLength(31);
      expect(rows.at(-1)).toEqual({ name: 'plain:one', base: null, labels: null });
      expect(rows).toHaveLength(33);
    } finally {
      await pool.end();
    }
  });

  it('records a counter once, when the flush that first inserts it commits', async () => {
    const url = await createDatabase();
    const tally = await tallyOn(redis.url, url, { shards: 2 });
    const pool = new pg.Pool({ connectionString: url });
    try {
      const globex = { name: 'api_calls', labels: { tenant: 'globex', region: 'eu' } };
      await tally.incr(globex, 1);
      await tally.incr('plain', 1);
      expect(await labelRows(pool)).toEqual([]);
      await tally.flush();
      await tally.incr(globex, 1);
      await tally.flush();
      expect(await labelRows(pool)).toEqual([
        {
          name: 'api_calls{region="eu",tenant="globex"}',
          base: 'api_calls',
          labels: { region: 'eu', tenant: 'globex' },
        },
        { name: 'plain', base: null, labels: null },
      ]);
    } finally {
      await tally.close();
      await pool.end();
    }
  });
});
