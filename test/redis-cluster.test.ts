import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { createDatabase } from './support/index.js';
import { startRedisCluster, type RedisClusterHandle } from './support/redis-cluster.js';
import { postgresTotals, tallyOn } from './support/tally-store.js';

let cluster: RedisClusterHandle;
beforeAll(async () => {
  cluster = await startRedisCluster();
}, 60_000);
afterAll(async () => {
  await cluster.stop();
});

async function fresh(options: Parameters<typeof tallyOn>[2] = {}) {
  const url = await createDatabase();
  const tally = await tallyOn(cluster.url, url, {
    shards: 8,
    redisLossAccepted: 'any',
    ...options,
  });
  const pool = new pg.Pool({ connectionString: url });
  onTestFinished(async () => {
    await tally.close();
    await pool.end();
  });
  return { tally, pool, url };
}

describe('on a Redis Cluster of 3 primaries and 3 replicas', () => {
  it('increments, reads, flushes and reconciles every shard', async () => {
    const { tally, url } = await fresh();
    const names = Array.from({ length: 40 }, (_, i) => `c${i}`);
    await Promise.all(
      names.flatMap((name, i) => Array.from({ length: 5 }, () => tally.incr(name, i + 1))),
    );
    expect(await tally.getMany(names)).toEqual(names.map((_, i) => 5 * (i + 1)));
    const applied = await tally.flush();
    expect(applied.length).toBe(8);
    const totals = await postgresTotals(url);
    expect(names.map((name) => totals.get(name))).toEqual(names.map((_, i) => 5 * (i + 1)));
    const report = await tally.reconcile();
    console.log(JSON.stringify(report).slice(0, 500));
    const status = await tally.status();
    console.log(JSON.stringify(status).slice(0, 800));
  });
});
