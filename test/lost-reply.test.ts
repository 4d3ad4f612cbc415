import { performance } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTally, migrate, type Tally } from '../src/index.js';
import { createDatabase, startRedis, waitFor, type RedisHandle } from './support/index.js';
import { startTcpProxy, type TcpProxy } from './support/tcp-proxy.js';

let redis: RedisHandle;
let proxy: TcpProxy;
let direct: Redis;
beforeAll(async () => {
  redis = await startRedis();
  proxy = await startTcpProxy(redis.host, redis.port);
  direct = new Redis(redis.url);
});
afterAll(async () => {
  await direct.quit();
  await proxy.close();
  await redis.stop();
});

/** What Redis itself holds for a counter, read past the proxy. */
async function redisTotal(prefix: string, counter: string): Promise<number> {
  for (const key of await direct.keys(`${prefix}:*:totals`)) {
    const value = await direct.hget(key, counter);
    if (value !== null) return Number(value);
  }
  return 0;
}

describe('a reply lost after Redis applied the command', () => {
  it('makes plain ioredis count twice: the hazard the proxy reproduces', async () => {
    const client = new Redis(`redis://127.0.0.1:${proxy.port}`, { retryStrategy: () => 10 });
    client.on('error', () => undefined);
    try {
      await client.set('naive', '0');
      proxy.loseNextReply();
      await client.incr('naive'); // re-sent after the reconnect, applied a second time
      expect(Number(await direct.get('naive'))).toBe(2);
    } finally {
      client.disconnect();
    }
  });

  describe('through Tally', () => {
    let tally: Tally;
    const prefix = 'lost';
    beforeAll(async () => {
      const postgres = await createDatabase();
      await migrate(postgres);
      tally = await createTally({
        redis: `redis://127.0.0.1:${proxy.port}`,
        postgres,
        keyPrefix: prefix,
        shards: 2,
        redisCommandTimeoutMs: 500,
      });
    });
    afterAll(async () => {
      await tally.close();
    });

    it('without an idempotency key: OUTCOME_UNKNOWN, and applied once, never twice', async () => {
      await tally.incr('a', 1);
      const lostBefore = proxy.repliesLost;
      proxy.loseNextReply();
      await expect(tally.incr('a', 1)).rejects.toMatchObject({ code: 'OUTCOME_UNKNOWN' });
      expect(proxy.repliesLost).toBe(lostBefore + 1);
      // Redis applied the increment whose reply was lost, exactly once.
      expect(await redisTotal(prefix, 'a')).toBe(2);
      expect(await tally.get('a')).toBe(2);
    });

    it('with an idempotency key: retried by Tally, counted exactly once', async () => {
      const lostBefore = proxy.repliesLost;
      proxy.loseNextReply();
      const result = await tally.incr('b', 5, { idempotencyKey: 'order-1' });
      expect(proxy.repliesLost).toBe(lostBefore + 1);
      // The first attempt counted; the retry found its key and changed nothing.
      expect(result).toEqual({ status: 'duplicate', value: 5, duplicate: true });
      expect(await redisTotal(prefix, 'b')).toBe(5);
      await tally.flush();
      expect(await tally.get('b')).toBe(5);
    });
  });
});

describe('Redis paused (SIGSTOP) past the client timeout, then resumed', () => {
  it('late commands still run once; a retry with the same key counts nothing more', async () => {
    const paused = await startRedis();
    const postgres = await createDatabase();
    await migrate(postgres);
    const tally = await createTally({
      redis: paused.url,
      postgres,
      shards: 2,
      redisCommandTimeoutMs: 200,
    });
    try {
      await tally.incr('p', 1);
      await paused.kill('SIGSTOP');
      const [keyed, plain] = await Promise.allSettled([
        tally.incr('p', 10, { idempotencyKey: 'retry-me' }),
        tally.incr('p', 100),
      ]);
      // Tally retried the keyed one while Redis was paused, then gave up: both unknown.
      expect(keyed).toMatchObject({ status: 'rejected', reason: { code: 'OUTCOME_UNKNOWN' } });
      expect(plain).toMatchObject({ status: 'rejected', reason: { code: 'OUTCOME_UNKNOWN' } });
      await paused.kill('SIGCONT');

      // Redis ran every late command: the keyed increment once (its retries were duplicates),
      // the plain one once.
      expect(await waitFor('Redis to answer', () => tally.get('p'))).toBe(111);
      expect(await tally.incr('p', 10, { idempotencyKey: 'retry-me' })).toMatchObject({
        status: 'duplicate',
        value: 111,
      });
      await tally.flush();
      expect(await tally.get('p')).toBe(111);
    } finally {
      await tally.close();
      await paused.stop();
    }
  });
});

describe('Redis stalled: a keyed increment gives up within incrementTimeoutMs', () => {
  it('retries only while a retry can still end in time', async () => {
    const stalled = await startRedis();
    const postgres = await createDatabase();
    await migrate(postgres);
    const tally = await createTally({
      redis: stalled.url,
      postgres,
      shards: 2,
      redisCommandTimeoutMs: 500,
      incrementTimeoutMs: 1_200,
    });
    try {
      await tally.incr('s', 1);
      await stalled.kill('SIGSTOP');
      const started = performance.now();
      await expect(tally.incr('s', 1, { idempotencyKey: 'k' })).rejects.toMatchObject({
        code: 'OUTCOME_UNKNOWN',
      });
      const elapsedMs = performance.now() - started;
      // One retry fits (500 + 20 + 500 ms); every retry took 4 × 500 ms + 620 ms of backoff.
      expect(elapsedMs).toBeGreaterThanOrEqual(1_000);
      expect(elapsedMs).toBeLessThan(1_200 + 300);
    } finally {
      await stalled.kill('SIGCONT');
      await tally.close();
      await stalled.stop();
    }
  });
});

describe('Redis down for a while', () => {
  it('logs its connection error once per outage, and that it is back', async () => {
    const flaky = await startRedis();
    const postgres = await createDatabase();
    await migrate(postgres);
    const lines: { level: number; msg: string }[] = [];
    const logger = pino(
      { level: 'debug' },
      {
        write(line: string) {
          lines.push(JSON.parse(line) as { level: number; msg: string });
        },
      },
    );
    const tally = await createTally({ redis: flaky.url, postgres, shards: 2, logger });
    try {
      await flaky.kill('SIGKILL');
      // ioredis retries every 50–2000 ms: several failed attempts in this time.
      await waitFor('reconnect attempts', () =>
        lines.filter((line) => line.msg.startsWith('redis connection error')).length >= 3
          ? true
          : undefined,
      );
      await flaky.restart();
      await waitFor('the connection back', () =>
        lines.some((line) => line.msg === 'redis connection back') ? true : undefined,
      );
      const warnings = lines.filter(
        (line) => line.level === 40 && /connection error/.test(line.msg),
      );
      expect(warnings).toHaveLength(1);
    } finally {
      await tally.close();
      await flaky.stop();
    }
  });
});
