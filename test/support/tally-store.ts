import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { createTally, migrate, type Tally, type TallyOptions } from '../../src/index.js';

/**
 * A Tally client on its own namespace: a fresh key prefix on the given Redis and the given,
 * migrated, database. Closed by the returned `close`.
 */
export async function tallyOn(
  redisUrl: string,
  postgresUrl: string,
  options: Partial<TallyOptions> = {},
): Promise<Tally> {
  await migrate(postgresUrl);
  return createTally({
    redis: redisUrl,
    postgres: postgresUrl,
    keyPrefix: `t${randomBytes(4).toString('hex')}`,
    ...options,
  });
}

/** Every counter's flushed total, read straight from PostgreSQL. */
export async function postgresTotals(databaseUrl: string): Promise<Map<string, number>> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const { rows } = await client.query<{ name: string; value: string }>(
      'SELECT name, value FROM tally.counters',
    );
    return new Map(rows.map((row) => [row.name, Number(row.value)]));
  } finally {
    await client.end();
  }
}
