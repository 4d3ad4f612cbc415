import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, readdirSync, realpathSync } from 'node:fs';
import { chown, mkdir, rm } from 'node:fs/promises';
import { delimiter, dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import pg from 'pg';
import { TallyError } from '../errors.js';

/** A server `tally dev` started; `stop()` shuts it down cleanly and waits for it. */
export interface LocalServer {
  readonly url: string;
  stop(): Promise<void>;
}

function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir !== '' && existsSync(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

function postgresBinDir(): string | undefined {
  const initdb = onPath('initdb');
  if (initdb !== undefined) return dirname(realpathSync(initdb));
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const newest = readdirSync(root)
    .filter((name) => /^\d+$/.test(name))
    .sort((a, b) => Number(b) - Number(a))[0];
  return newest === undefined ? undefined : join(root, newest, 'bin');
}

function missing(what: string, install: string): TallyError {
  return new TallyError(
    'CONFIGURATION',
    `tally dev needs ${what} to start its own (${install}), or set the URL of one that runs.`,
  );
}

/**
 * Its own process group: Ctrl-C in the terminal reaches `tally dev` only, which then stops the
 * servers in order (after its last flush) instead of racing them.
 */
function startProcess(
  command: string,
  args: string[],
  options: { cwd?: string; user?: { uid: number; gid: number } } = {},
) {
  const child = spawn(command, args, {
    detached: true,
    stdio: 'ignore',
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    ...options.user,
  });
  const exited = once(child, 'exit');
  exited.catch(() => undefined);
  // If `tally dev` itself ends without stopping them, they go with it.
  process.on('exit', () => child.kill('SIGKILL'));
  return { child, exited };
}

async function stopProcess(child: ChildProcess, exited: Promise<unknown>, signal: NodeJS.Signals) {
  if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  await exited;
}

async function poll(what: string, probe: () => Promise<boolean>, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe().catch(() => false))) {
    if (Date.now() > deadline) throw new TallyError('UNAVAILABLE', `${what} did not start.`);
    await sleep(100);
  }
}

/** One command on the local Redis at `port` (a connection of its own, no retries). */
async function redisCall(port: number, ...command: [string, ...string[]]): Promise<unknown> {
  const client = new Redis({
    port,
    host: '127.0.0.1',
    lazyConnect: true,
    retryStrategy: () => null,
  });
  client.on('error', () => undefined);
  try {
    await client.connect();
    return await client.call(...command);
  } finally {
    client.disconnect();
  }
}

const redisAnswers = async (port: number) => (await redisCall(port, 'PING')) === 'PONG';

/** One redis-server with AOF (fsynced on every write) and no eviction, its data in `dir`. */
function startRedisProcess(binary: string, dir: string, port: number, extraArgs: string[] = []) {
  return startProcess(binary, [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '',
    '--appendonly', 'yes', '--appendfsync', 'always', '--maxmemory-policy', 'noeviction',
    ...extraArgs,
  ]); // prettier-ignore
}

/** redis-server with AOF, its data in `dir` (reused by the next run). */
export async function startLocalRedis(dir: string, port: number): Promise<LocalServer> {
  const binary = onPath('redis-server');
  if (binary === undefined) throw missing('redis-server', 'apt-get install redis-server');
  await mkdir(dir, { recursive: true });
  const { child, exited } = startRedisProcess(binary, dir, port);
  await poll('redis-server', () => redisAnswers(port));
  // SIGTERM: Redis fsyncs its AOF and exits.
  return { url: `redis://127.0.0.1:${port}`, stop: () => stopProcess(child, exited, 'SIGTERM') };
}

/**
 * A Redis Cluster of `ports.length` nodes (a replica for each primary), each node's data and
 * cluster configuration in `dir/<port>` (reused by the next run on the same ports; `fresh`
 * starts over). Created with redis-cli unless the nodes already form one.
 */
export async function startLocalRedisCluster(
  dir: string,
  ports: readonly number[],
  fresh: boolean,
): Promise<LocalServer> {
  const binary = onPath('redis-server');
  const cli = onPath('redis-cli');
  if (binary === undefined || cli === undefined) {
    throw missing('redis-server and redis-cli', 'apt-get install redis-server');
  }
  if (fresh) await rm(dir, { recursive: true, force: true });
  for (const port of ports) await mkdir(join(dir, String(port)), { recursive: true });
  const nodes = ports.map(
    (port) =>
    startRedisProcess(binary, join(dir, String(port)), port, [
      '--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf',
      '--cluster-node-timeout', '5000',
    ]), // prettier-ignore
  );
  const stop = async () => {
    await Promise.all(nodes.map(({ child, exited }) => stopProcess(child, exited, 'SIGTERM')));
  };
  try {
    for (const port of ports) await poll(`redis-server on ${port}`, () => redisAnswers(port));
    const info = async (port: number) => String(await redisCall(port, 'CLUSTER', 'INFO'));
    // Nodes that know each other (a cluster of an earlier run) only need a moment to agree.
    if ((await info(ports[0] ?? 0)).includes('cluster_known_nodes:1\r\n')) {
      const created = spawnSync(cli, [
        '--cluster', 'create', ...ports.map((port) => `127.0.0.1:${port}`),
        '--cluster-replicas', '1', '--cluster-yes',
      ], { encoding: 'utf8' }); // prettier-ignore
      if (created.status !== 0) {
        throw new TallyError(
          'UNAVAILABLE',
          `redis-cli could not create the Redis Cluster: ${created.stdout}${created.stderr}`,
        );
      }
    }
    for (const port of ports) {
      await poll('the Redis Cluster', async () => (await info(port)).includes('cluster_state:ok'));
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return { url: `redis+cluster://${ports.map((port) => `127.0.0.1:${port}`).join(',')}`, stop };
}

/** Whether `user` can enter `dir` (and so every folder above it). */
function enters(dir: string, user: { uid: number; gid: number }): boolean {
  return spawnSync('test', ['-x', dir], { ...user }).status === 0;
}

/** The first folder on the way to `dir` that `user` cannot enter. */
function blockingFolder(dir: string, user: { uid: number; gid: number }): string {
  let blocking = dir;
  for (let up = dirname(dir); up !== blocking && !enters(up, user); up = dirname(up)) {
    blocking = up;
  }
  return blocking;
}

/**
 * Where PostgreSQL keeps its data: `dir`, unless PostgreSQL runs as the postgres user (Tally
 * runs as root) and that user cannot reach it, as in a checkout under /root (0700) or a
 * `mktemp -d` folder; then a folder of its own under /var/tmp, the same for the same `dir`.
 */
function postgresHome(
  dir: string,
  user: { uid: number; gid: number } | undefined,
): { dir: string; note?: string } {
  if (user === undefined) return { dir };
  let existing = dir;
  while (!existsSync(existing)) existing = dirname(existing);
  if (enters(existing, user)) return { dir };
  const own = join(
    '/var/tmp',
    `tally-dev-postgres-${createHash('sha256').update(dir).digest('hex').slice(0, 12)}`,
  );
  return {
    dir: own,
    note: `PostgreSQL's data is in ${own}: the postgres user cannot enter ${blockingFolder(existing, user)}`,
  };
}

/** A PostgreSQL cluster in `dir` (initdb on first use), with a `tally` database. */
export async function startLocalPostgres(
  wanted: string,
  port: number,
  say: (line: string) => void,
): Promise<LocalServer> {
  const bin = postgresBinDir();
  if (bin === undefined) throw missing('PostgreSQL', 'apt-get install postgresql');
  // PostgreSQL refuses to run as root: run it as the postgres user then.
  const user =
    process.getuid?.() === 0
      ? {
          uid: Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' })),
          gid: Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' })),
        }
      : undefined;
  const home = postgresHome(wanted, user);
  if (home.note !== undefined) say(`  note: ${home.note}`);
  const dir = home.dir;
  const data = join(dir, 'data');
  const socket = join(dir, 'socket');
  await mkdir(socket, { recursive: true });
  if (user !== undefined) for (const d of [dir, socket]) await chown(d, user.uid, user.gid);
  if (!existsSync(join(data, 'PG_VERSION'))) {
    try {
      execFileSync(
        join(bin, 'initdb'),
        ['-D', data, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8'],
        // In its own folder: the postgres user may not be able to enter the current one.
        { stdio: 'pipe', cwd: dir, ...user },
      );
    } catch (error) {
      const stderr = (error as { stderr?: Buffer }).stderr;
      const output = stderr === undefined ? '' : stderr.toString();
      throw new TallyError(
        'CONFIGURATION',
        `initdb could not create ${data}${user === undefined ? '' : ' as the postgres user (it must be able to reach that directory)'}: ${output.trim()}`,
        { cause: error },
      );
    }
  }
  const { child, exited } = startProcess(
    join(bin, 'postgres'),
    [
      '-D',
      data,
      '-p',
      String(port),
      '-c',
      'listen_addresses=127.0.0.1',
      '-c',
      `unix_socket_directories=${socket}`,
    ],
    { cwd: dir, ...(user === undefined ? {} : { user }) },
  );
  const admin = `postgres://postgres@127.0.0.1:${port}/postgres`;
  await poll('PostgreSQL', async () => {
    const client = new pg.Client({ connectionString: admin });
    client.on('error', () => undefined);
    try {
      await client.connect();
      const { rowCount } = await client.query(`SELECT 1 FROM pg_database WHERE datname = 'tally'`);
      if (rowCount === 0) await client.query('CREATE DATABASE tally');
      return true;
    } finally {
      await client.end().catch(() => undefined);
    }
  });
  // SIGINT: PostgreSQL's fast shutdown (a clean checkpoint).
  return {
    url: `postgres://postgres@127.0.0.1:${port}/tally`,
    stop: () => stopProcess(child, exited, 'SIGINT'),
  };
}

/**
 * The same servers as containers, for machines with Docker and without the binaries. Uses
 * testcontainers, a development dependency: `tally dev` runs from a clone.
 */
export async function startContainerServers(
  dataDir: string,
  want: { redis: boolean; postgres: boolean },
): Promise<{ redis?: LocalServer; postgres?: LocalServer }> {
  const noServers = (cause: unknown) =>
    new TallyError(
      'CONFIGURATION',
      'tally dev needs redis-server and PostgreSQL installed, a Docker engine (with the ' +
        'testcontainers development dependency), or REDIS_URL and DATABASE_URL of servers that run.',
      { cause },
    );
  const { GenericContainer, getContainerRuntimeClient } = await import('testcontainers').catch(
    (cause: unknown) => {
      throw noServers(cause);
    },
  );
  await getContainerRuntimeClient().catch((cause: unknown) => {
    throw noServers(cause);
  });
  const servers: { redis?: LocalServer; postgres?: LocalServer } = {};
  if (want.redis) {
    await mkdir(join(dataDir, 'redis'), { recursive: true });
    const container = await new GenericContainer('redis:7.2')
      .withCommand(['redis-server', '--appendonly', 'yes', '--appendfsync', 'always'])
      .withBindMounts([{ source: join(dataDir, 'redis'), target: '/data' }])
      .withExposedPorts(6379)
      .start();
    servers.redis = {
      url: `redis://${container.getHost()}:${container.getMappedPort(6379)}`,
      stop: async () => {
        await container.stop({ timeout: 10_000 });
      },
    };
  }
  if (want.postgres) {
    await mkdir(join(dataDir, 'postgres-container'), { recursive: true });
    const container = await new GenericContainer('postgres:16')
      .withEnvironment({ POSTGRES_HOST_AUTH_METHOD: 'trust', POSTGRES_DB: 'tally' })
      .withBindMounts([
        { source: join(dataDir, 'postgres-container'), target: '/var/lib/postgresql/data' },
      ])
      .withExposedPorts(5432)
      .start();
    const url = `postgres://postgres@${container.getHost()}:${container.getMappedPort(5432)}/tally`;
    await poll('PostgreSQL container', async () => {
      const client = new pg.Client({ connectionString: url });
      client.on('error', () => undefined);
      try {
        await client.connect();
        return true;
      } finally {
        await client.end().catch(() => undefined);
      }
    });
    servers.postgres = {
      url,
      stop: async () => {
        await container.stop({ timeout: 10_000 });
      },
    };
  }
  return servers;
}

/** Whether this machine has the binaries to run the servers itself. */
export function hasLocalBinaries(): { redis: boolean; postgres: boolean } {
  return { redis: onPath('redis-server') !== undefined, postgres: postgresBinDir() !== undefined };
}
