import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  GenericContainer,
  getContainerRuntimeClient,
  type StartedTestContainer,
} from 'testcontainers';
import { chooseBackend, findRedisServer } from './binaries.js';
import { freePort } from './free-port.js';
import { redisAnswers } from './redis-ping.js';
import { startSupervised, type SupervisedProcess } from './supervised-process.js';
import { waitFor } from './wait-for.js';

export type RedisPersistence = 'none' | 'aof-everysec' | 'aof-always';

export interface StartRedisOptions {
  /** Default 'none', like the Redis that most deployments start with. */
  persistence?: RedisPersistence;
  /** Default: a free one. */
  port?: number;
  /** More `redis-server` arguments (a cluster node's, a replica's). Local servers only. */
  extraArgs?: readonly string[];
}

/** A private Redis server for one test file. */
export interface RedisHandle {
  readonly host: string;
  readonly port: number;
  readonly url: string;
  readonly persistence: RedisPersistence;
  /**
   * Sends `signal` to the server. For a signal that ends it (SIGKILL, SIGTERM, SIGINT, SIGQUIT)
   * this resolves once the server has exited; SIGSTOP and SIGCONT resolve at once.
   */
  kill(signal: NodeJS.Signals): Promise<void>;
  /** Starts the server again on the same port and data directory (shutting it down first if
   * it is still running: SIGTERM, so Redis fsyncs its AOF). */
  restart(): Promise<void>;
  /** Kills the server and starts it again with an empty data directory: Redis lost everything. */
  wipe(): Promise<void>;
  /** Ends the server for good and removes its files. */
  stop(): Promise<void>;
}

const terminatingSignals = new Set<NodeJS.Signals>(['SIGKILL', 'SIGTERM', 'SIGINT', 'SIGQUIT']);
const readyTimeoutMs = 20_000;

function serverArgs(port: number, dataDir: string, persistence: RedisPersistence): string[] {
  return [
    '--port', String(port),
    '--bind', '127.0.0.1',
    '--dir', dataDir,
    '--save', '',
    '--appendonly', persistence === 'none' ? 'no' : 'yes',
    '--appendfsync', persistence === 'aof-always' ? 'always' : 'everysec',
    '--maxmemory-policy', 'noeviction',
  ]; // prettier-ignore
}

function waitForRedis(host: string, port: number): Promise<true> {
  return waitFor(
    `Redis on port ${port}`,
    async () => ((await redisAnswers(host, port)) ? true : undefined),
    { timeoutMs: readyTimeoutMs },
  );
}

export async function startRedis(options: StartRedisOptions = {}): Promise<RedisHandle> {
  const persistence = options.persistence ?? 'none';
  const port = options.port ?? (await freePort());
  const extraArgs = options.extraArgs ?? [];
  // A cluster node or replica must reach its peers on 127.0.0.1: binaries on this machine.
  const backend = extraArgs.length > 0 ? 'local' : await chooseBackend('Redis');
  const binary = findRedisServer();
  if (backend === 'local' && binary === undefined) {
    throw new Error(
      'These tests need redis-server on this machine (Debian/Ubuntu: apt-get install redis-server).',
    );
  }
  const handle =
    backend === 'local' && binary !== undefined
      ? new LocalRedis(binary, port, persistence, extraArgs)
      : new ContainerRedis(port, persistence);
  await handle.start();
  return handle;
}

class LocalRedis implements RedisHandle {
  readonly host = '127.0.0.1';
  readonly url: string;
  private rootDir = '';
  private server: SupervisedProcess | undefined;

  constructor(
    private readonly binary: string,
    readonly port: number,
    readonly persistence: RedisPersistence,
    private readonly extraArgs: readonly string[],
  ) {
    this.url = `redis://${this.host}:${port}`;
  }

  private get dataDir(): string {
    return join(this.rootDir, 'data');
  }

  async start(): Promise<void> {
    this.rootDir = await mkdtemp(join(tmpdir(), 'tally-redis-'));
    await this.launch();
  }

  private async launch(): Promise<void> {
    await mkdir(this.dataDir, { recursive: true });
    this.server = await startSupervised({
      command: this.binary,
      args: [...serverArgs(this.port, this.dataDir, this.persistence), ...this.extraArgs],
      logFile: join(this.rootDir, 'redis.log'),
      orphanSignal: 'KILL',
      cleanupDir: this.rootDir,
      waitReady: () => waitForRedis(this.host, this.port),
    });
  }

  async kill(signal: NodeJS.Signals): Promise<void> {
    const server = this.server;
    if (server === undefined || !server.isRunning()) throw new Error('redis-server is not running');
    server.signal(signal);
    if (terminatingSignals.has(signal)) await server.waitForExit();
  }

  private async shutDown(signal: NodeJS.Signals): Promise<void> {
    const server = this.server;
    if (server === undefined || !server.isRunning()) return;
    server.signal('SIGCONT'); // a stopped server would not act on the signal below
    server.signal(signal);
    await server.waitForExit();
  }

  async restart(): Promise<void> {
    await this.shutDown('SIGTERM');
    await this.launch();
  }

  async wipe(): Promise<void> {
    await this.shutDown('SIGKILL');
    await rm(this.dataDir, { recursive: true, force: true });
    await this.launch();
  }

  async stop(): Promise<void> {
    await this.shutDown('SIGKILL');
    this.server?.release();
    await rm(this.rootDir, { recursive: true, force: true });
  }
}

/**
 * The same handle backed by a container, for machines with Docker but without redis-server.
 * Data lives in the container's own filesystem, so it survives a kill and restart of that
 * container; `wipe` replaces the container with a new one on the same host port.
 */
class ContainerRedis implements RedisHandle {
  readonly host = '127.0.0.1';
  readonly url: string;
  private container: StartedTestContainer | undefined;

  constructor(
    readonly port: number,
    readonly persistence: RedisPersistence,
  ) {
    this.url = `redis://${this.host}:${port}`;
  }

  async start(): Promise<void> {
    this.container = await new GenericContainer(process.env.TALLY_TEST_REDIS_IMAGE ?? 'redis:7.2')
      .withCommand(['redis-server', ...serverArgs(6379, '/data', this.persistence), '--bind', '*'])
      .withExposedPorts({ container: 6379, host: this.port })
      .start();
    await waitForRedis(this.host, this.port);
  }

  private async docker() {
    if (this.container === undefined) throw new Error('the Redis container was stopped');
    const client = await getContainerRuntimeClient();
    return client.container.getById(this.container.getId());
  }

  private async waitStopped(): Promise<void> {
    const container = await this.docker();
    await waitFor('the Redis container to stop', async () =>
      (await container.inspect()).State.Running ? undefined : true,
    );
  }

  async kill(signal: NodeJS.Signals): Promise<void> {
    await (await this.docker()).kill({ signal });
    if (terminatingSignals.has(signal)) await this.waitStopped();
  }

  async restart(): Promise<void> {
    const container = await this.docker();
    const state = (await container.inspect()).State;
    if (state.Paused || state.Status === 'running') {
      await container.kill({ signal: 'SIGCONT' });
      await container.stop({ t: 10 });
    }
    await container.start();
    await waitForRedis(this.host, this.port);
  }

  async wipe(): Promise<void> {
    await this.stop();
    await this.start();
  }

  async stop(): Promise<void> {
    await this.container?.stop({ timeout: 0 });
    this.container = undefined;
  }
}
