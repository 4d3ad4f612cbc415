import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inOneWrite } from '../src/redis/connection.js';
import { createTally, migrate, type Tally } from '../src/index.js';
import { createDatabase, startRedis, type RedisHandle } from './support/index.js';
import { startTcpProxy, type TcpProxy } from './support/tcp-proxy.js';

let redisServer: RedisHandle;
let proxy: TcpProxy;
beforeAll(async () => {
  redisServer = await startRedis();
  proxy = await startTcpProxy(redisServer.host, redisServer.port);
});
afterAll(async () => {
  await proxy.close();
  await redisServer.stop();
});

/** Whether a request naming `marker` reaches Redis within `ms`. */
async function reachesRedis(marker: string, ms: number): Promise<boolean> {
  return Promise.race([proxy.forwarded(marker).then(() => true), sleep(ms).then(() => false)]);
}

// ioredis' auto-pipelining holds every command issued while its pipeline is in flight until all
// of that pipeline's replies are in; increments must not wait so (src/connections.ts).
describe.each([
  { mode: 'group commit', coalesce: true },
  { mode: 'per call', coalesce: false },
])('increments ($mode)', ({ coalesce }) => {
  let tally: Tally;
  beforeAll(async () => {
    // A store per mode: a store's key prefix is fixed once it is set up.
    const postgres = await createDatabase();
    await migrate(postgres);
    tally = await createTally({
      redis: `redis://127.0.0.1:${proxy.port}`,
      postgres,
      keyPrefix: `pipelining-${String(coalesce)}`,
      coalesce,
    });
  });
  afterAll(async () => {
    await tally.close();
  });

  it("reach Redis while an earlier increment's reply is still on its way", async () => {
    const release = proxy.holdReplies();
    let first, second;
    try {
      first = tally.incr('first-counter');
      await proxy.forwarded('first-counter');
      second = tally.incr('second-counter');
      expect(await reachesRedis('second-counter', 1_000)).toBe(true);
    } finally {
      release();
    }
    expect(await first).toMatchObject({ status: 'applied', value: 1 });
    expect(await second).toMatchObject({ status: 'applied', value: 1 });
  });
});

describe('inOneWrite', () => {
  it("sends the commands issued inside it in one write of the connection's socket", async () => {
    const redis = new Redis(redisServer.url);
    try {
      await redis.ping();
      // Counts the socket's writes (the socket is real; only its write calls are counted).
      const stream = redis.stream as unknown as {
        _write: (...args: unknown[]) => unknown;
        _writev: (...args: unknown[]) => unknown;
      };
      const writes = { single: 0, gathered: 0 };
      const write = stream._write.bind(stream);
      const writev = stream._writev.bind(stream);
      stream._write = (...args) => (writes.single++, write(...args));
      stream._writev = (...args) => (writes.gathered++, writev(...args));
      const three = () => [redis.incr('w1'), redis.incr('w2'), redis.incr('w3')];

      let replies: Promise<number>[] = [];
      inOneWrite(redis, () => {
        replies = three();
      });
      expect(await Promise.all(replies)).toEqual([1, 1, 1]);
      expect(writes).toEqual({ single: 0, gathered: 1 });

      // Without it, each command is a write of its own.
      expect(await Promise.all(three())).toEqual([2, 2, 2]);
      expect(writes).toEqual({ single: 3, gathered: 1 });
    } finally {
      redis.disconnect();
    }
  });
});
