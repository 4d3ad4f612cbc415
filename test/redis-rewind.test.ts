/**
 * A shard that goes back in time: the primary acknowledged increments its replica never got,
 * died, and the replica was promoted behind the same address. Nothing in Redis shows it; the
 * shard's sequence does, to the process that saw a later value.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it, onTestFinished } from 'vitest';
import { runTypeScript } from './support/child-process.js';
import { createDatabase, startRedis, waitFor } from './support/index.js';
import { nodeCommand } from './support/redis-cluster.js';
import { startTcpProxy } from './support/tcp-proxy.js';
import { tallyOn } from './support/tally-store.js';

const cli = new URL('../src/cli/main.ts', import.meta.url);

const offset = async (port: number) =>
  /master_repl_offset:(\d+)/.exec(
    String(await nodeCommand({ host: '127.0.0.1', port }, 'INFO', 'replication')),
  )?.[1];

describe('a failover to a replica that was behind', () => {
  it('is noticed by the process that saw a later sequence, recorded with its bound, and reported by reconcile and status', async () => {
    const primary = await startRedis();
    // The replica replicates through a proxy that can hold the stream: it falls behind.
    const link = await startTcpProxy('127.0.0.1', primary.port);
    const replica = await startRedis({
      extraArgs: ['--replicaof', '127.0.0.1', String(link.port)],
    });
    // Clients reach "the primary" at one address, as behind a managed endpoint.
    const endpoint = await startTcpProxy('127.0.0.1', primary.port);
    onTestFinished(async () => {
      await Promise.all([primary.stop(), replica.stop(), link.close(), endpoint.close()]);
    });
    const databaseUrl = await createDatabase();
    const env = {
      REDIS_URL: `redis://127.0.0.1:${endpoint.port}`,
      DATABASE_URL: databaseUrl,
      TALLY_SHARDS: '1',
      TALLY_KEY_PREFIX: `w${randomBytes(4).toString('hex')}`,
    };
    const tally = await tallyOn(env.REDIS_URL, databaseUrl, {
      shards: 1,
      keyPrefix: env.TALLY_KEY_PREFIX,
      redisLossAccepted: 'any',
    });
    onTestFinished(async () => {
      await tally.close();
    });
    for (let i = 0; i < 5; i++) await tally.incr('c');
    await waitFor('the replica to hold the first five', async () =>
      (await offset(replica.port)) === (await offset(primary.port)) ? true : undefined,
    );

    link.holdReplies();
    for (let i = 0; i < 10; i++) await tally.incr('c'); // acknowledged by the primary alone
    await primary.kill('SIGKILL');
    await link.close(); // what it held is never delivered
    await nodeCommand(replica, 'REPLICAOF', 'NO', 'ONE');
    endpoint.retarget(replica.port);
    endpoint.resetAll();

    const after = await waitFor('an increment on the promoted replica', () =>
      tally.incr('c').catch(() => undefined),
    );
    expect(after.value).toBe(6); // the ten are gone
    const [report] = await tally.reconcile();
    expect(report?.redisLostData).toBe(true);
    expect(report?.rewinds.map((rewind) => rewind.callsLost)).toEqual([10]);
    expect(Date.parse(report?.rewinds[0]?.foundAt ?? '')).toBeGreaterThan(Date.now() - 60_000);
    expect((await tally.status()).shards[0]?.unreportedRedisLosses).toBe(1);

    const check = await runTypeScript(cli, ['reconcile'], { ...process.env, ...env });
    expect(check.stdout).toMatch(
      /shard 0: went back in time at .* at least 10 applied increment calls lost/,
    );
    expect(check.code).toBe(1);
  });
});
