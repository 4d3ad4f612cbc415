import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTally, migrate, type Tally } from '../src/index.js';
import {
  startPostgres,
  startRedis,
  waitFor,
  type PostgresHandle,
  type RedisHandle,
} from './support/index.js';

let redis: RedisHandle;
let postgres: PostgresHandle;
let tally: Tally;
beforeAll(async () => {
  redis = await startRedis({ persistence: 'aof-always' });
  postgres = await startPostgres();
  const url = await postgres.createDatabase();
  await migrate(url);
  tally = await createTally({ redis: redis.url, postgres: url, shards: 2 });
});
afterAll(async () => {
  await tally.close();
  await postgres.destroy();
  await redis.stop();
});

describe('PostgreSQL down', () => {
  it('flushes fail and keep the batch; increments go on; nothing is lost when it returns', async () => {
    let acknowledged = 0;
    for (let i = 0; i < 10; i++)
      acknowledged += (await tally.incr('a', 2)).status === 'applied' ? 2 : 0;
    await tally.flush();

    for (let i = 0; i < 10; i++) {
      await tally.incr('a', 1);
      acknowledged++;
    }
    await postgres.stop('immediate'); // the pool's idle clients die with it: the process stays up

    await expect(tally.flush()).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    const stuck = await tally.status();
    expect(stuck.shards.some((s) => s.inflightBatch !== null)).toBe(true);

    // The API keeps accepting increments and reading totals while PostgreSQL is away.
    for (let i = 0; i < 10; i++) {
      await tally.incr('a', 3);
      acknowledged += 3;
    }
    expect(await tally.get('a')).toBe(acknowledged);
    await expect(tally.flush()).rejects.toMatchObject({ code: 'UNAVAILABLE' });

    await postgres.start();
    // The first attempts may meet connections that died with the old server.
    await waitFor('a flush to succeed', () => tally.flush());
    expect(await tally.get('a')).toBe(acknowledged);
    const reports = await tally.reconcile();
    expect(reports.flatMap((r) => r.drift)).toEqual([]);
    const after = await tally.status();
    expect(after.shards.every((s) => s.inflightBatch === null && s.pendingCounters === 0)).toBe(
      true,
    );
  });
});
