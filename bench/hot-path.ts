// The hot path: `incr` with group commit and per call, against raw auto-pipelined HINCRBY and
// the naive PostgreSQL counter, at the same concurrency and key distribution; and a sweep of
// concurrency for the chart.
import { Redis } from 'ioredis';
import pg from 'pg';
import { createTally } from '../src/index.js';
import { freshDatabase, type BenchContext } from './support/context.js';
import { throughput, zipf } from './support/measure.js';
import { ratioCheck, type BenchmarkResult } from './support/results.js';

/**
 * BASELINE, not Tally: the naive PostgreSQL counter this project started from. One statement
 * per increment: UPDATE … RETURNING, and INSERT when the row does not exist yet.
 */
export function naivePostgresCounter(pool: pg.Pool): (name: string) => Promise<void> {
  return async (name) => {
    const updated = await pool.query(
      'UPDATE naive_counters SET value = value + 1 WHERE name = $1 RETURNING value',
      [name],
    );
    if (updated.rowCount === 0) {
      await pool.query(
        `INSERT INTO naive_counters VALUES ($1, 1)
         ON CONFLICT (name) DO UPDATE SET value = naive_counters.value + 1`,
        [name],
      );
    }
  };
}

export async function hotPath(ctx: BenchContext): Promise<BenchmarkResult> {
  const counters = ctx.quick ? 10_000 : 100_000;
  const levels = ctx.quick ? [1, 100, 10_000] : [1, 10, 100, 1_000, 10_000];
  const top = 10_000;
  const pick = zipf(counters);
  const url = await freshDatabase(ctx);
  const raw = new Redis(ctx.redis.url, { enableAutoPipelining: true });
  const grouped = await createTally({ redis: ctx.redis.url, postgres: url, keyPrefix: 'group' });
  const perCall = await createTally({
    redis: ctx.redis.url,
    // A store of its own: a store's key prefix is fixed once it is set up.
    postgres: await freshDatabase(ctx),
    keyPrefix: 'percall',
    coalesce: false,
  });
  // The naive counter gets as many connections as PostgreSQL serves well on two cores; more
  // in flight only queue in the pool.
  const pool = new pg.Pool({ connectionString: url, max: 16 });
  await pool.query('CREATE TABLE naive_counters (name text PRIMARY KEY, value bigint NOT NULL)');
  const naive = naivePostgresCounter(pool);

  const systems: Record<string, (name: string) => Promise<unknown>> = {
    'raw HINCRBY': (name) => raw.hincrby('raw', name, 1),
    'Tally group commit': (name) => grouped.incr(name),
    'Tally per call': (name) => perCall.incr(name),
    'naive PostgreSQL': naive,
  };
  const series: NonNullable<BenchmarkResult['series']> = {};
  const figures: Record<string, number> = {};
  try {
    for (const concurrency of levels) {
      for (const [system, op] of Object.entries(systems)) {
        const perSecond = await throughput(concurrency, ctx.seconds, () => op(`c${pick()}`));
        (series[system] ??= []).push({ concurrency, perSecond });
        figures[`${system} zipf @${concurrency}`] = perSecond;
      }
    }
    figures['raw HINCRBY hot @10000'] = await throughput(top, ctx.seconds, () =>
      raw.hincrby('raw', 'hot', 1),
    );
    figures['Tally group commit hot @10000'] = await throughput(top, ctx.seconds, () =>
      grouped.incr('hot'),
    );
    figures['naive PostgreSQL hot @10000'] = await throughput(top, ctx.seconds, () => naive('hot'));
  } finally {
    raw.disconnect();
    await grouped.close();
    await perCall.close();
    await pool.end();
  }

  const at = (system: string) => figures[`${system} zipf @${top}`] ?? Number.NaN;
  return {
    name: 'hot path',
    figures,
    series,
    checks: [
      ratioCheck(
        'incr, group commit, 10k in flight, Zipf over 100k counters',
        at('Tally group commit'),
        at('raw HINCRBY'),
        'raw HINCRBY',
        4,
      ),
      ratioCheck(
        'incr, group commit, 10k in flight, Zipf over 100k counters',
        at('Tally group commit'),
        at('naive PostgreSQL'),
        'naive PostgreSQL',
        40,
      ),
      ratioCheck(
        'incr, group commit, one hot counter',
        figures['Tally group commit hot @10000'] ?? Number.NaN,
        figures['naive PostgreSQL hot @10000'] ?? Number.NaN,
        'naive PostgreSQL on one hot key',
        200,
      ),
      ratioCheck(
        'incr per call (coalescing off)',
        at('Tally per call'),
        at('raw HINCRBY'),
        'raw HINCRBY',
        0.5,
      ),
    ],
  };
}
