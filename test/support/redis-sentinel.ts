import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findRedisSentinel } from './binaries.js';
import { freePort } from './free-port.js';
import { nodeCommand } from './redis-cluster.js';
import { redisAnswers } from './redis-ping.js';
import { startRedis, type RedisHandle } from './redis-server.js';
import { startSupervised, type SupervisedProcess } from './supervised-process.js';
import { waitFor } from './wait-for.js';

const primaryName = 'tallyprimary';

/** A primary, two replicas and three sentinels watching them, private to a test file. */
export interface RedisSentinelHandle {
  /** The primary first, then its replicas (as started; failovers change the roles). */
  readonly servers: readonly RedisHandle[];
  readonly sentinelPorts: readonly number[];
  /** `redis+sentinel://…/<primary name>`. */
  readonly url: string;
  /** The server the sentinels name as primary now. */
  primary(): Promise<RedisHandle>;
  /**
   * Waits until the sentinels name a primary other than `former`, that primary answers as one,
   * and (unless told otherwise) has `replicas` online replicas.
   */
  waitForPrimary(options: { not?: RedisHandle; replicas?: number }): Promise<RedisHandle>;
  stop(): Promise<void>;
}

function sentinelBinary(): string {
  const binary = findRedisSentinel();
  if (binary === undefined) {
    throw new Error(
      'These tests need redis-sentinel (Debian/Ubuntu: apt-get install redis-sentinel).',
    );
  }
  return binary;
}

async function startSentinel(
  dir: string,
  port: number,
  primaryPort: number,
  downAfterMs: number,
): Promise<SupervisedProcess> {
  const config = join(dir, `sentinel-${port}.conf`);
  // A sentinel rewrites its file as it learns the set, so each has its own.
  await writeFile(
    config,
    [
      `port ${port}`,
      'bind 127.0.0.1',
      `dir ${dir}`,
      `sentinel monitor ${primaryName} 127.0.0.1 ${primaryPort} 2`,
      `sentinel down-after-milliseconds ${primaryName} ${downAfterMs}`,
      `sentinel failover-timeout ${primaryName} 5000`,
      `sentinel parallel-syncs ${primaryName} 2`,
      '',
    ].join('\n'),
  );
  return startSupervised({
    command: sentinelBinary(),
    args: [config],
    logFile: join(dir, `sentinel-${port}.log`),
    orphanSignal: 'KILL',
    waitReady: () =>
      waitFor(`sentinel on ${port}`, async () =>
        (await redisAnswers('127.0.0.1', port)) ? true : undefined,
      ),
  });
}

async function onlineReplicas(server: RedisHandle): Promise<number | undefined> {
  const info = String(await nodeCommand(server, 'INFO', 'replication'));
  if (!info.includes('role:master')) return undefined;
  return info.split('\n').filter((line) => /^slave\d+:.*state=online/.test(line)).length;
}

/** A primary and two replicas of it (no sentinels), once both replicas are online. */
export async function startReplicatedRedis(): Promise<[RedisHandle, RedisHandle, RedisHandle]> {
  // Any of them may become the primary. A full copy starts at once (Redis waits 5 s by default
  // for more replicas to share it: a resync after a failover took that long and more).
  const common = ['--replica-announce-ip', '127.0.0.1', '--repl-diskless-sync-delay', '0'];
  const primary = await startRedis({ extraArgs: common });
  const [first, second] = await Promise.all(
    [0, 1].map(() =>
      startRedis({
        extraArgs: ['--replicaof', '127.0.0.1', String(primary.port), ...common],
      }),
    ),
  );
  await waitFor('both replicas online', async () =>
    (await onlineReplicas(primary)) === 2 ? true : undefined,
  );
  if (first === undefined || second === undefined) throw new Error('the replicas did not start');
  return [primary, first, second];
}

export async function startRedisSentinel(
  options: { downAfterMs?: number } = {},
): Promise<RedisSentinelHandle> {
  const servers = await startReplicatedRedis();
  const [primary] = servers;
  const dir = await mkdtemp(join(tmpdir(), 'tally-sentinel-'));
  const sentinelPorts = [await freePort(), await freePort(), await freePort()];
  const sentinels = await Promise.all(
    sentinelPorts.map((port) =>
      startSentinel(dir, port, primary.port, options.downAfterMs ?? 1_000),
    ),
  );
  const named = async (): Promise<RedisHandle | undefined> => {
    for (const port of sentinelPorts) {
      try {
        const reply = (await nodeCommand(
          { host: '127.0.0.1', port },
          'SENTINEL',
          'get-master-addr-by-name',
          primaryName,
        )) as [string, string] | null;
        return servers.find((server) => server.port === Number(reply?.[1]));
      } catch {
        // this sentinel is down: ask the next
      }
    }
    return undefined;
  };
  const handle: RedisSentinelHandle = {
    servers,
    sentinelPorts,
    url: `redis+sentinel://${sentinelPorts.map((port) => `127.0.0.1:${port}`).join(',')}/${primaryName}`,
    async primary() {
      const found = await named();
      if (found === undefined) throw new Error('no sentinel names a primary');
      return found;
    },
    waitForPrimary: ({ not, replicas: wanted = 2 }) =>
      waitFor(
        'the sentinels to name a primary with its replicas',
        async () => {
          const found = await named();
          if (found === undefined || found === not) return undefined;
          const online = await onlineReplicas(found).catch(() => undefined);
          return online !== undefined && online >= wanted ? found : undefined;
        },
        { timeoutMs: 30_000 },
      ),
    async stop() {
      for (const sentinel of sentinels) {
        sentinel.signal('SIGKILL');
        await sentinel.waitForExit();
        sentinel.release();
      }
      await Promise.all(servers.map((server) => server.stop()));
      await rm(dir, { recursive: true, force: true });
    },
  };
  // Every sentinel knows both replicas (and each other) before a test relies on a failover.
  await waitFor(
    'the sentinels to see the replicas',
    async () => {
      for (const port of sentinelPorts) {
        const reply = (await nodeCommand(
          { host: '127.0.0.1', port },
          'SENTINEL',
          'replicas',
          primaryName,
        )) as unknown[];
        if (reply.length < 2) return undefined;
      }
      return true;
    },
    { timeoutMs: 30_000 },
  );
  await handle.waitForPrimary({});
  return handle;
}
