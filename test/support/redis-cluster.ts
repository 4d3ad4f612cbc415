import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { freeClusterPort } from './free-port.js';
import { startTcpProxy, type TcpProxy } from './tcp-proxy.js';
import { startRedis, type RedisHandle, type RedisPersistence } from './redis-server.js';
import { waitFor } from './wait-for.js';

const run = promisify(execFile);

export interface StartClusterOptions {
  /** Default 3; each with one replica. */
  primaries?: number;
  /** How long a primary may not answer before its replica takes over (default 1000 ms). */
  nodeTimeoutMs?: number;
  persistence?: RedisPersistence;
  /**
   * Every node announces a TCP proxy in front of it as its address, so clients reach it
   * through the proxy and a test can lose a reply (support/tcp-proxy.ts). Default false.
   */
  proxied?: boolean;
}

/** One line of CLUSTER NODES. */
export interface ClusterNode {
  id: string;
  /** The port it announces (its proxy's, with `proxied`). */
  port: number;
  primary: boolean;
  /** The primary's id, for a replica. */
  primaryId: string | undefined;
  failed: boolean;
  /** Slot ranges served, for a primary. */
  slots: [number, number][];
}

/** A Redis Cluster of local `redis-server`s (cluster-enabled), private to a test file. */
export interface RedisClusterHandle {
  readonly nodes: readonly RedisHandle[];
  /** With `proxied`: the proxy in front of each node, by the node's port. */
  readonly proxies: ReadonlyMap<number, TcpProxy>;
  /** `redis+cluster://` with every node (its proxy, with `proxied`) as a seed. */
  readonly url: string;
  /** The cluster as `node` sees it. */
  topology(node?: RedisHandle): Promise<ClusterNode[]>;
  /** The node that serves `key` as primary now. */
  primaryOf(key: string): Promise<RedisHandle>;
  /** The nodes that replicate `primary`. */
  replicasOf(primary: RedisHandle): Promise<RedisHandle[]>;
  /** The primaries that serve slots now. */
  primaries(): Promise<RedisHandle[]>;
  /** The node's cluster id. */
  idOf(node: RedisHandle): Promise<string>;
  /**
   * Waits until every running node sees the cluster ok, every slot served by a running primary,
   * and (unless told otherwise) every primary with a connected replica.
   */
  waitHealthy(options?: { replicated?: boolean; timeoutMs?: number }): Promise<void>;
  /** A command on one node (a short-lived connection). */
  command(node: RedisHandle, ...args: (string | number)[]): Promise<unknown>;
  stop(): Promise<void>;
}

export function parseClusterNodes(text: string): ClusterNode[] {
  return text
    .trim()
    .split('\n')
    .map((line) => {
      const [id = '', address = '', flags = '', primaryId = '', , , , , ...slots] = line.split(' ');
      const flagList = flags.split(',');
      return {
        id,
        port: Number(/:(\d+)@/.exec(address)?.[1]),
        primary: flagList.includes('master'),
        primaryId: primaryId === '-' ? undefined : primaryId,
        failed: flagList.includes('fail') || flagList.includes('fail?'),
        slots: slots
          .filter((range) => !range.startsWith('['))
          .map((range) => {
            const [from = '0', to = from] = range.split('-');
            return [Number(from), Number(to)] as [number, number];
          }),
      };
    });
}

export async function nodeCommand(
  node: { host: string; port: number },
  ...args: (string | number)[]
): Promise<unknown> {
  const client = new Redis({
    host: node.host,
    port: node.port,
    lazyConnect: true,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
    connectTimeout: 1_000,
    commandTimeout: 2_000,
  });
  client.on('error', () => undefined);
  try {
    await client.connect();
    return await client.call(String(args[0]), ...args.slice(1));
  } finally {
    client.disconnect();
  }
}

function isRunning(node: RedisHandle): Promise<boolean> {
  return nodeCommand(node, 'PING').then(
    () => true,
    () => false,
  );
}

export async function startRedisCluster(
  options: StartClusterOptions = {},
): Promise<RedisClusterHandle> {
  const primaries = options.primaries ?? 3;
  const nodeTimeoutMs = options.nodeTimeoutMs ?? 1_000;
  const ports: number[] = [];
  while (ports.length < primaries * 2) {
    const port = await freeClusterPort();
    if (!ports.includes(port)) ports.push(port);
  }
  const proxies = new Map<number, TcpProxy>();
  for (const port of options.proxied === true ? ports : []) {
    proxies.set(port, await startTcpProxy('127.0.0.1', port));
  }
  const announced = (port: number) => proxies.get(port)?.port ?? port;
  const nodes = await Promise.all(
    ports.map((port) =>
      startRedis({
        port,
        persistence: options.persistence ?? 'none',
        extraArgs: [
          '--cluster-enabled', 'yes',
          '--cluster-config-file', 'nodes.conf',
          '--cluster-node-timeout', String(nodeTimeoutMs),
          // A replica whose primary died takes over however long ago it last heard from it.
          '--cluster-replica-validity-factor', '0',
          // A replica's full copy starts at once (Redis waits 5 s by default).
          '--repl-diskless-sync-delay', '0',
          ...(proxies.has(port)
            ? ['--cluster-announce-port', String(announced(port)),
               '--cluster-announce-bus-port', String(port + 10_000)]
            : []),
        ], // prettier-ignore
      }),
    ),
  );
  await run('redis-cli', [
    '--cluster', 'create',
    ...ports.map((port) => `127.0.0.1:${port}`),
    '--cluster-replicas', '1',
    '--cluster-yes',
  ]); // prettier-ignore
  const byPort = new Map(nodes.map((node) => [announced(node.port), node]));
  /** A command on the first node that answers (some may be down). */
  const anyNode = async (...args: (string | number)[]): Promise<unknown> => {
    for (const node of nodes) {
      try {
        return await nodeCommand(node, ...args);
      } catch {
        // down: ask the next one
      }
    }
    throw new Error('no cluster node answers');
  };
  const nodeOn = (port: number): RedisHandle => {
    const node = byPort.get(port);
    if (node === undefined) throw new Error(`no node of this cluster listens on ${port}`);
    return node;
  };

  const handle: RedisClusterHandle = {
    nodes,
    proxies,
    url: `redis+cluster://${ports.map((port) => `127.0.0.1:${announced(port)}`).join(',')}`,
    async topology(node) {
      const reply = await (node === undefined
        ? anyNode('CLUSTER', 'NODES')
        : nodeCommand(node, 'CLUSTER', 'NODES'));
      return parseClusterNodes(String(reply));
    },
    async primaryOf(key) {
      const slot = Number(await anyNode('CLUSTER', 'KEYSLOT', key));
      const serving = (await handle.topology()).find(
        (node) =>
          node.primary &&
          !node.failed &&
          node.slots.some(([from, to]) => from <= slot && slot <= to),
      );
      const found = serving === undefined ? undefined : byPort.get(serving.port);
      if (found === undefined) throw new Error(`no primary serves slot ${slot}`);
      return found;
    },
    async primaries() {
      return (await handle.topology())
        .filter((node) => node.primary && !node.failed && node.slots.length > 0)
        .map((node) => nodeOn(node.port));
    },
    async idOf(node) {
      const id = (await handle.topology()).find((entry) => entry.port === announced(node.port))?.id;
      if (id === undefined) throw new Error(`no cluster node listens on ${node.port}`);
      return id;
    },
    async replicasOf(primary) {
      const topology = await handle.topology();
      const id = topology.find((node) => node.port === announced(primary.port))?.id;
      return topology
        .filter((node) => node.primaryId === id && !node.failed)
        .map((node) => nodeOn(node.port));
    },
    async waitHealthy(wait = {}) {
      await waitFor(
        'the Redis Cluster to be healthy',
        async () => {
          const running: RedisHandle[] = [];
          for (const node of nodes) if (await isRunning(node)) running.push(node);
          for (const node of running) {
            const info = String(await handle.command(node, 'CLUSTER', 'INFO'));
            if (!info.includes('cluster_state:ok')) return undefined;
          }
          const topology = await handle.topology(running[0]);
          const live = topology.filter(
            (node) => !node.failed && running.some((r) => announced(r.port) === node.port),
          );
          const covered = live
            .filter((node) => node.primary)
            .flatMap((node) => node.slots)
            .reduce((sum, [from, to]) => sum + to - from + 1, 0);
          if (covered !== 16_384) return undefined;
          if (wait.replicated === false) return true;
          for (const primary of live.filter((node) => node.primary && node.slots.length > 0)) {
            const role = (await handle.command(nodeOn(primary.port), 'ROLE')) as unknown[];
            if ((role[2] as unknown[]).length === 0) return undefined;
          }
          return true;
        },
        { timeoutMs: wait.timeoutMs ?? 30_000 },
      );
    },
    command: nodeCommand,
    async stop() {
      await Promise.all(nodes.map((node) => node.stop()));
      await Promise.all([...proxies.values()].map((proxy) => proxy.close()));
    },
  };
  await handle.waitHealthy();
  return handle;
}
