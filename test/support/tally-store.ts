import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { createTally, migrate, type Tally, type TallyOptions } from '../../src/index.js';
import { createDatabase } from './shared-postgres.js';

/**
 * For tests that count at fixed dates, whenever they run: ten years of backdating, and every
 * bucket kept forever (a retention refuses increments dated before it).
 */
export const anyDate = {
  maxBackdateMs: 10 * 365 * 86_400_000,
  retention: { minute: null, hour: null, day: null, month: null },
} as const satisfies Partial<TallyOptions>;

/**
 * A Tally client on its own namespace: a fresh key prefix on the given Redis and the given,
 * migrated, database. Closed by the returned `close`.
 */
export async function tallyOn(
  redisUrl: string,
  postgres: string | pg.Pool,
  options: Partial<TallyOptions> = {},
): Promise<Tally> {
  await migrate(postgres);
  return createTally({
    redis: redisUrl,
    postgres,
    keyPrefix: `t${randomBytes(4).toString('hex')}`,
    // Tests count at fixed dates of 2026: accept them whenever the tests run.
    ...anyDate,
    ...options,
  });
}

/** Every counter's flushed total, read straight from PostgreSQL (a URL, or a pool). */
export async function postgresTotals(db: string | pg.Pool): Promise<Map<string, number>> {
  const read = async (queryable: pg.Pool | pg.Client) => {
    const { rows } = await queryable.query<{ name: string; value: string }>(
      'SELECT name, value FROM tally.counters',
    );
    return new Map(rows.map((row) => [row.name, Number(row.value)]));
  };
  if (typeof db !== 'string') return read(db);
  const client = new pg.Client({ connectionString: db });
  await client.connect();
  try {
    return await read(client);
  } finally {
    await client.end();
  }
}

/**
 * A migrated store on one shard (a process killed or paused mid-flush then holds its only
 * batch), a client of it, and its options as a child process takes them (JSON). A killed or
 * paused flusher loses its lock after `flushLockTtlMs`.
 */
export async function oneShardStore(redisUrl: string, prefix: string, flushLockTtlMs: number) {
  const postgres = await createDatabase();
  await migrate(postgres);
  const options = {
    redis: redisUrl,
    postgres,
    keyPrefix: `${prefix}${randomBytes(4).toString('hex')}`,
    shards: 1,
    flushLockTtlMs,
    buckets: ['hour', 'day'] as const,
    ...anyDate,
  };
  const tally = await createTally({ ...options, buckets: [...options.buckets] });
  const pool = new pg.Pool({ connectionString: postgres });
  return { options, tally, pool };
}
