import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTally, type Tally } from '../src/index.js';
import { runTypeScript } from './support/child-process.js';
import { startRedis, type RedisHandle } from './support/index.js';
import { oneShardStore, postgresTotals } from './support/tally-store.js';

const flushOnce = new URL('./fixtures/flush-once.ts', import.meta.url);

let redis: RedisHandle;
beforeAll(async () => {
  redis = await startRedis({ persistence: 'aof-always' });
});
afterAll(async () => {
  await redis.stop();
});

/** A store, a client in this process, and what was acknowledged to it. */
async function store() {
  // The killed process never releases its lock; the next flush takes it once it expires.
  const { options, tally, pool } = await oneShardStore(redis.url, 'crash', 1_000);
  const acknowledged = new Map<string, number>();
  const increment = async (round: number) => {
    for (let i = 0; i < 40; i++) {
      const counter = `c${i % 7}`;
      const by = (i % 5) - 1 + round;
      await tally.incr(counter, by, { at: Date.UTC(2026, 10, 21, i % 3) });
      acknowledged.set(counter, (acknowledged.get(counter) ?? 0) + by);
    }
  };
  return { options, tally, pool, acknowledged, increment };
}

async function totalsIn(pool: pg.Pool) {
  const days = await pool.query<{ name: string; value: string }>(
    `SELECT name, sum(value)::text AS value FROM tally.counter_buckets
     WHERE granularity = 'day' GROUP BY name`,
  );
  return {
    counters: await postgresTotals(pool),
    dayBuckets: new Map(days.rows.map((row) => [row.name, Number(row.value)])),
  };
}

async function ledgerRows(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ n: string }>(
    'SELECT count(*) AS n FROM tally.applied_batches',
  );
  return Number(rows[0]?.n);
}

async function finish(tally: Tally, pool: pg.Pool, acknowledged: Map<string, number>) {
  await tally.flush();
  const { counters, dayBuckets } = await totalsIn(pool);
  expect(counters).toEqual(acknowledged);
  expect(dayBuckets).toEqual(acknowledged);
  const names = [...acknowledged.keys()];
  expect(await tally.getMany(names)).toEqual(names.map((name) => acknowledged.get(name)));
  const reports = await tally.reconcile();
  expect(reports.flatMap((report) => report.drift)).toEqual([]);
  expect((await tally.status()).shards.every((s) => s.inflightBatch === null)).toBe(true);
}

describe('a flushing process killed with SIGKILL', () => {
  it.each([
    // [fault point, what PostgreSQL holds when the process dies]
    ['before-snapshot', 'nothing'],
    ['after-snapshot', 'nothing'],
    ['mid-transaction', 'nothing'],
    ['after-commit', 'the batch'],
    ['during-acknowledge', 'the batch'],
  ] as const)(
    'at %s leaves PostgreSQL with %s, and the next flush makes it exact',
    async (point, holds) => {
      const { options, tally, pool, acknowledged, increment } = await store();
      try {
        await increment(0);
        const child = await runTypeScript(flushOnce, [JSON.stringify(options)], {
          TALLY_FAULT_POINT: point,
        });
        expect(child.signal).toBe('SIGKILL');

        const afterCrash = await totalsIn(pool);
        if (holds === 'nothing') {
          expect(afterCrash.counters.size).toBe(0);
          expect(await ledgerRows(pool)).toBe(0);
        } else {
          expect(afterCrash.counters).toEqual(acknowledged);
          expect(await ledgerRows(pool)).toBeGreaterThan(0);
        }
        const inflight = (await tally.status()).shards.filter((s) => s.inflightBatch !== null);
        const leavesBatchInFlight = point !== 'before-snapshot' && point !== 'during-acknowledge';
        if (leavesBatchInFlight) expect(inflight.length).toBeGreaterThan(0);

        // Increments keep landing while a batch is stuck in flight, and a process starting up
        // now reads PostgreSQL + pending + in-flight not in the ledger.
        await increment(1);
        const restarted = await createTally({ ...options, buckets: [...options.buckets] });
        try {
          expect(await restarted.getMany([...acknowledged.keys()])).toEqual([
            ...acknowledged.values(),
          ]);
        } finally {
          await restarted.close();
        }
        // Reconcile, with deltas pending and in flight under several bucket tags each, finds
        // Redis == PostgreSQL + pending + in-flight (only while the ledger lacks the batch).
        const check = await tally.reconcile();
        expect(check.flatMap((report) => report.drift)).toEqual([]);
        // So does usage: every increment fell on 2026-11-21.
        const day = { from: Date.UTC(2026, 10, 21), to: Date.UTC(2026, 10, 22) };
        for (const [counter, value] of acknowledged) {
          const [bucket] = await tally.usage(counter, { ...day, granularity: 'day' });
          expect([counter, bucket?.value]).toEqual([counter, value]);
        }
        // And a quota's usage of that day, seeded now from the same three parts.
        const limit = { max: Number.MAX_SAFE_INTEGER, per: 'day' } as const;
        for (const [counter, value] of acknowledged) {
          const checked = await tally.incr(counter, 0, { at: day.from, limit, check: true });
          expect([counter, checked.usage]).toEqual([counter, value]);
        }
        await finish(tally, pool, acknowledged);
      } finally {
        await tally.close();
        await pool.end();
      }
    },
  );
});
