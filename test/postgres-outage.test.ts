import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { createTally, migrate, type Tally, type TallyOptions } from '../src/index.js';
import {
  startPostgres,
  startRedis,
  waitFor,
  type PostgresHandle,
  type RedisHandle,
} from './support/index.js';
import { commandCalls } from './support/redis-stats.js';
import { startTcpProxy } from './support/tcp-proxy.js';

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

/** A Tally on a fresh database reached through a TCP proxy that can lose or hold replies. */
async function tallyViaProxy(options: Omit<TallyOptions, 'redis' | 'postgres'>) {
  const proxy = await startTcpProxy(postgres.host, postgres.port);
  const url = await postgres.createDatabase();
  await migrate(url);
  const proxied = new URL(url);
  proxied.port = String(proxy.port);
  const viaProxy = await createTally({
    redis: redis.url,
    postgres: proxied.toString(),
    shards: 1,
    ...options,
  });
  return { proxy, url, viaProxy };
}

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
    // What only PostgreSQL knows is unknown, not zero, while it is down.
    expect(stuck.schemaVersion).toBeNull();
    expect(stuck.shards.map((s) => s.unreportedRedisLosses)).toEqual(stuck.shards.map(() => null));

    // A usage query fails at once, before it scans every shard's unflushed fields in Redis.
    const raw = new Redis(redis.url);
    onTestFinished(() => raw.quit().then(() => undefined));
    const scriptsBefore = await commandCalls(raw, 'evalsha');
    const november = { from: '2026-11-01', to: '2026-12-01', granularity: 'day' } as const;
    await expect(tally.query({ counter: 'api_calls', ...november })).rejects.toMatchObject({
      code: 'UNAVAILABLE',
    });
    expect(await commandCalls(raw, 'evalsha')).toBe(scriptsBefore);

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
    expect(after.shards.every((s) => s.inflightBatch === null && s.pendingDeltas === 0)).toBe(true);
    expect(after.shards.map((s) => s.unreportedRedisLosses)).toEqual(after.shards.map(() => 0));
  });
});

describe('the connection lost during COMMIT (outcome unknown)', () => {
  it('the flush fails, the batch stays in flight, and the ledger makes the retry exact', async () => {
    const { proxy, url, viaProxy } = await tallyViaProxy({ keyPrefix: 'commit' });
    try {
      await viaProxy.incr('c', 5);
      await viaProxy.incr('c', 6);
      // PostgreSQL commits; its reply to COMMIT never reaches Tally.
      proxy.loseReplyTo('COMMIT');
      await expect(viaProxy.flush()).rejects.toMatchObject({ code: 'UNAVAILABLE' });
      expect(proxy.repliesLost).toBe(1);
      expect((await viaProxy.status()).shards[0]?.inflightBatch).not.toBeNull();

      const [retry] = await waitFor('the retried flush', () => viaProxy.flush());
      expect(retry).toMatchObject({ resumed: true, alreadyApplied: true, counters: 1 });
      expect(await viaProxy.get('c')).toBe(11);
      const direct = await createTally({
        redis: redis.url,
        postgres: url,
        shards: 1,
        keyPrefix: 'commit',
      });
      try {
        expect((await direct.reconcile()).flatMap((r) => r.drift)).toEqual([]);
      } finally {
        await direct.close();
      }
    } finally {
      await viaProxy.close();
      await proxy.close();
    }
  });
});

describe('PostgreSQL silent during a usage query', () => {
  it('the query fails after the query timeout, and the next one gets a working connection', async () => {
    const { proxy, viaProxy } = await tallyViaProxy({ keyPrefix: 'silent', queryTimeoutMs: 500 });
    try {
      const november = {
        counter: 'calls',
        from: '2026-11-01',
        to: '2026-12-01',
        granularity: 'total',
      } as const;
      await viaProxy.incr({ name: 'calls', labels: { tenant: 'acme' } }, 4, {
        at: Date.parse('2026-11-10T00:00:00Z'),
      });
      await viaProxy.flush();
      expect((await viaProxy.query(november)).rows[0]?.value).toBe(4);
      // The snapshot's reply is held past the timeout, then let through: the query must have
      // given up by then, not waited.
      const query = viaProxy.query(november);
      await proxy.forwarded('BEGIN ISOLATION LEVEL REPEATABLE READ');
      const letThrough = proxy.holdReplies();
      // Past the connect timeout's 10 s floor twice, so that every read below must give up.
      const late = setTimeout(letThrough, 30_000);
      onTestFinished(() => {
        clearTimeout(late);
        letThrough();
      });
      await expect(query).rejects.toThrow(/sent nothing for 500 ms during a usage query/);
      // Still silent: a query or a listing, on a new connection (the failed client was closed)
      // or an idle one, is not waited for either: the pool gives up connecting after
      // max(queryTimeoutMs, 10 s).
      for (const read of [
        () => viaProxy.query(november),
        () => viaProxy.listCounters({ counter: 'calls' }),
      ]) {
        const startedMs = Date.now();
        await expect(read()).rejects.toMatchObject({ code: 'UNAVAILABLE' });
        expect(Date.now() - startedMs).toBeLessThan(12_000);
      }
      letThrough();
      expect((await viaProxy.query(november)).rows[0]?.value).toBe(4);
    } finally {
      await viaProxy.close();
      await proxy.close();
    }
  });
});
