/**
 * The flush ledger grows by a row per shard per flush; what reads it on every status call must
 * not grow with it.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDatabase, startRedis, type RedisHandle } from './support/index.js';
import { tallyOn } from './support/tally-store.js';

let redis: RedisHandle;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});

interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Actual Rows': number;
  'Actual Loops': number;
  Plans?: PlanNode[];
}

/** Every node of a plan that reads the ledger table, with the rows it read over all loops. */
function ledgerReads(node: PlanNode): { type: string; rows: number }[] {
  const own =
    node['Relation Name'] === 'applied_batches'
      ? [{ type: node['Node Type'], rows: node['Actual Rows'] * node['Actual Loops'] }]
      : [];
  return [...own, ...(node.Plans ?? []).flatMap(ledgerReads)];
}

async function plan(pool: pg.Pool, sql: string, values: unknown[]): Promise<PlanNode> {
  const { rows } = await pool.query<{ 'QUERY PLAN': [{ Plan: PlanNode }] }>(
    `EXPLAIN (ANALYZE, FORMAT JSON) ${sql}`,
    values,
  );
  const [explained] = rows[0]?.['QUERY PLAN'] ?? [];
  if (explained === undefined) throw new Error('no plan');
  return explained.Plan;
}

describe('the flush ledger', () => {
  it('a ledger of 1M rows costs status() one index step per shard', async () => {
    const url = await createDatabase();
    const shards = 16;
    const pool = new pg.Pool({ connectionString: url });
    // The statements status() sends, as sent: the plan checked below is of what it runs.
    const sent: { text: string; values: unknown[] }[] = [];
    const query = pool.query.bind(pool) as (...args: unknown[]) => Promise<unknown>;
    (pool as unknown as { query: (...args: unknown[]) => Promise<unknown> }).query = (
      ...args: unknown[]
    ) => {
      const [first, second] = args;
      const text = typeof first === 'string' ? first : (first as { text?: string }).text;
      if (text !== undefined) sent.push({ text, values: Array.isArray(second) ? second : [] });
      return query(...args);
    };
    const tally = await tallyOn(redis.url, pool, { shards });
    try {
      await pool.query(
        `INSERT INTO tally.applied_batches (shard, batch_id, counters, applied_at)
         SELECT g % $1, 'b' || g, 1, timestamptz '2026-01-01' + g * interval '1 second'
         FROM generate_series(1, 1000000) AS g`,
        [shards],
      );
      await pool.query('ANALYZE tally.applied_batches');

      sent.length = 0;
      await tally.status();
      const statusReads = sent.filter((statement) => statement.text.includes('applied_batches'));
      expect(statusReads).toHaveLength(1);
      const [lastFlush] = statusReads;
      const reads = ledgerReads(await plan(pool, lastFlush?.text ?? '', lastFlush?.values ?? []));
      expect(reads.length).toBeGreaterThan(0);
      expect(reads.every((read) => read.type.startsWith('Index'))).toBe(true);
      // One row per shard, not the million `max(…) GROUP BY shard` read.
      expect(reads.reduce((sum, read) => sum + read.rows, 0)).toBeLessThanOrEqual(shards);
      const grouped = ledgerReads(
        await plan(
          pool,
          'SELECT shard, max(applied_at) FROM tally.applied_batches GROUP BY shard',
          [],
        ),
      );
      // (Parallel workers' averages round: "about" a million.)
      expect(grouped.reduce((sum, read) => sum + read.rows, 0)).toBeGreaterThan(990_000);

      // And it reads the right rows: the latest of each shard.
      const status = await tally.status();
      const latest = (shard: number) =>
        new Date(
          Date.parse('2026-01-01T00:00:00Z') + (1_000_000 - ((1_000_000 - shard) % shards)) * 1000,
        );
      for (const shard of status.shards) {
        expect(shard.lastFlushAt?.getTime(), `shard ${shard.shard}`).toBe(
          latest(shard.shard).getTime(),
        );
      }
    } finally {
      await tally.close();
      await pool.end();
    }
  });
});
