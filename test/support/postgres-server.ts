import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chown, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import {
  GenericContainer,
  getContainerRuntimeClient,
  type StartedTestContainer,
} from 'testcontainers';
import { chooseBackend, findPostgresBinDir, postgresUser } from './binaries.js';
import { freePort } from './free-port.js';
import { startSupervised, type SupervisedProcess } from './supervised-process.js';
import { waitFor } from './wait-for.js';

/** PostgreSQL's shutdown modes, as `pg_ctl stop -m` names them. */
export type PostgresStopMode = 'smart' | 'fast' | 'immediate';

/** The signal `pg_ctl stop -m MODE` sends the postmaster. */
const stopSignals: Record<PostgresStopMode, NodeJS.Signals> = {
  smart: 'SIGTERM',
  fast: 'SIGINT',
  immediate: 'SIGQUIT',
};

/** A private PostgreSQL cluster. */
export interface PostgresHandle {
  readonly host: string;
  readonly port: number;
  /** A connection URL for `database` (default: the `postgres` maintenance database). */
  url(database?: string): string;
  /** Creates an empty database with a unique name and returns its URL. */
  createDatabase(): Promise<string>;
  /** Stops the server as `pg_ctl stop -m mode` would; the data directory stays. */
  stop(mode?: PostgresStopMode): Promise<void>;
  /** Starts a stopped server again on the same port and data directory. */
  start(): Promise<void>;
  /** Ends the server for good and removes its files. */
  destroy(): Promise<void>;
}

const readyTimeoutMs = 30_000;
const execFileAsync = promisify(execFile);

export async function startPostgres(
  options: {
    /**
     * fsync on, as in production (a container always is). Tests leave it off; the benchmarks
     * turn it on, since their baselines commit per operation.
     */
    durable?: boolean;
  } = {},
): Promise<PostgresHandle> {
  const port = await freePort();
  const handle =
    (await chooseBackend('PostgreSQL')) === 'local'
      ? new LocalPostgres(findPostgresBinDir() ?? '', port, options.durable ?? false)
      : new ContainerPostgres(port);
  await handle.create();
  return handle;
}

export async function createDatabaseOn(adminUrl: string): Promise<string> {
  const name = `tally_test_${randomBytes(6).toString('hex')}`;
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE ${name}`);
  } finally {
    await client.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

async function answers(url: string): Promise<true | undefined> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1_000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch {
    return undefined;
  } finally {
    await client.end().catch(() => undefined);
  }
}

abstract class BasePostgres implements PostgresHandle {
  readonly host = '127.0.0.1';
  constructor(readonly port: number) {}

  url(database = 'postgres'): string {
    return `postgres://postgres@${this.host}:${this.port}/${database}`;
  }

  createDatabase(): Promise<string> {
    return createDatabaseOn(this.url());
  }

  protected waitReady(): Promise<true> {
    return waitFor(`PostgreSQL on port ${this.port}`, () => answers(this.url()), {
      timeoutMs: readyTimeoutMs,
    });
  }

  abstract create(): Promise<void>;
  abstract stop(mode?: PostgresStopMode): Promise<void>;
  abstract start(): Promise<void>;
  abstract destroy(): Promise<void>;
}

const enters = (path: string, user: { uid: number; gid: number }) =>
  spawnSync('test', ['-x', path], { ...user }).status === 0;

/**
 * Where the server's directory goes: the temporary directory if the postgres user can enter it
 * (PostgreSQL refuses to run as root), else /tmp; if neither, an error naming the directory it
 * cannot enter (PostgreSQL itself fails with a status and no reason).
 */
function reachableTmp(user: { uid: number; gid: number } | undefined): string {
  if (user === undefined) return tmpdir();
  for (const candidate of [tmpdir(), '/tmp']) if (enters(candidate, user)) return candidate;
  let blocking = tmpdir();
  for (let up = dirname(blocking); up !== blocking && !enters(up, user); up = dirname(up)) {
    blocking = up;
  }
  throw new Error(
    `PostgreSQL runs as the postgres user, which cannot enter ${blocking} (nor /tmp): set ` +
      'TMPDIR to a directory it can reach.',
  );
}

class LocalPostgres extends BasePostgres {
  private rootDir = '';
  private server: SupervisedProcess | undefined;
  private readonly user = postgresUser();

  constructor(
    private readonly binDir: string,
    port: number,
    private readonly durable: boolean,
  ) {
    super(port);
  }

  private get dataDir(): string {
    return join(this.rootDir, 'data');
  }

  async create(): Promise<void> {
    this.rootDir = await mkdtemp(join(reachableTmp(this.user), 'tally-postgres-'));
    await mkdir(join(this.rootDir, 'socket'));
    if (this.user !== undefined) {
      for (const dir of [this.rootDir, join(this.rootDir, 'socket')]) {
        await chown(dir, this.user.uid, this.user.gid);
      }
    }
    // prettier-ignore
    const initdbArgs = ['-D', this.dataDir, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--locale=C', '--no-sync'];
    // In a directory of its own: the postgres user may not be able to enter ours.
    await execFileAsync(join(this.binDir, 'initdb'), initdbArgs, {
      ...this.user,
      cwd: this.rootDir,
    });
    await this.start();
  }

  async start(): Promise<void> {
    if (this.server?.isRunning() === true) throw new Error('PostgreSQL is already running');
    this.server = await startSupervised({
      command: join(this.binDir, 'postgres'),
      args: [
        '-D', this.dataDir,
        '-p', String(this.port),
        '-c', 'listen_addresses=127.0.0.1',
        '-c', `unix_socket_directories=${join(this.rootDir, 'socket')}`,
        '-c', 'max_connections=200',
        // The harness kills processes, never the machine: the page cache survives every fault
        // it injects, so fsync buys tests nothing but time.
        '-c', `fsync=${this.durable ? 'on' : 'off'}`,
      ], // prettier-ignore
      logFile: join(this.rootDir, 'postgres.log'),
      orphanSignal: 'QUIT',
      cleanupDir: this.rootDir,
      ...(this.user === undefined ? {} : { user: this.user }),
      waitReady: () => this.waitReady(),
    });
  }

  async stop(mode: PostgresStopMode = 'fast'): Promise<void> {
    const server = this.server;
    if (server === undefined || !server.isRunning()) return;
    server.signal('SIGCONT');
    server.signal(stopSignals[mode]);
    await server.waitForExit();
  }

  async destroy(): Promise<void> {
    await this.stop('immediate');
    this.server?.release();
    await rm(this.rootDir, { recursive: true, force: true });
  }
}

/** The same handle on a container, for machines with Docker but without PostgreSQL. */
class ContainerPostgres extends BasePostgres {
  private container: StartedTestContainer | undefined;

  async create(): Promise<void> {
    this.container = await new GenericContainer(
      process.env.TALLY_TEST_POSTGRES_IMAGE ?? 'postgres:16',
    )
      .withEnvironment({ POSTGRES_HOST_AUTH_METHOD: 'trust' })
      .withExposedPorts({ container: 5432, host: this.port })
      .start();
    await this.waitReady();
  }

  private async docker() {
    if (this.container === undefined) throw new Error('the PostgreSQL container was destroyed');
    const client = await getContainerRuntimeClient();
    return client.container.getById(this.container.getId());
  }

  async stop(mode: PostgresStopMode = 'fast'): Promise<void> {
    const container = await this.docker();
    if (!(await container.inspect()).State.Running) return;
    await container.kill({ signal: stopSignals[mode] });
    await waitFor('the PostgreSQL container to stop', async () =>
      (await container.inspect()).State.Running ? undefined : true,
    );
  }

  async start(): Promise<void> {
    await (await this.docker()).start();
    await this.waitReady();
  }

  async destroy(): Promise<void> {
    await this.container?.stop({ timeout: 0 });
    this.container = undefined;
  }
}
