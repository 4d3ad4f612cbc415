import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTally, migrate, type Tally } from '../src/index.js';
import { createDatabase, startRedis, type RedisHandle } from './support/index.js';
import { startTcpProxy, type TcpProxy } from './support/tcp-proxy.js';

let redis: RedisHandle;
let proxy: TcpProxy;
let postgres: string;
beforeAll(async () => {
  redis = await startRedis();
  proxy = await startTcpProxy(redis.host, redis.port);
  postgres = await createDatabase();
  await migrate(postgres);
});
afterAll(async () => {
  await proxy.close();
  await redis.stop();
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
