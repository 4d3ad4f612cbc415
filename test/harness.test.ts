import { spawn } from 'node:child_process';
import { cp, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { once } from 'node:events';
import { Redis } from 'ioredis';
import pg from 'pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import { runTypeScript } from './support/child-process.js';
import { descendants, stillAlive } from './support/process-tree.js';
import { startPostgres, startRedis, waitFor, type RedisHandle } from './support/index.js';

async function redisFor(persistence: 'none' | 'aof-everysec' | 'aof-always') {
  const server = await startRedis({ persistence });
  onTestFinished(() => server.stop());
  return server;
}

/** A client that fails fast instead of queueing while the server is away. */
function clientFor(server: RedisHandle, options: { commandTimeout?: number } = {}): Redis {
  const client = new Redis(server.url, {
    maxRetriesPerRequest: 0,
    retryStrategy: () => 50,
    ...options,
  });
  client.on('error', () => undefined);
  onTestFinished(async () => {
    client.disconnect();
    await Promise.resolve();
  });
  return client;
}

async function getAfterReconnect(client: Redis, key: string): Promise<string | null> {
  return waitFor(`GET ${key} to answer`, async () => ({ value: await client.get(key) })).then(
    ({ value }) => value,
  );
}

describe('startRedis', () => {
  it('keeps every acknowledged write across kill -9 and restart with aof-always', async () => {
    const server = await redisFor('aof-always');
    const client = clientFor(server);
    await client.set('k', 'v');
    await client.incrby('n', 41);

    await server.kill('SIGKILL');
    await expect(client.get('k')).rejects.toThrow();
    await server.restart();

    expect(await getAfterReconnect(client, 'k')).toBe('v');
    expect(await client.get('n')).toBe('41');
  });

  it('keeps writes that reached the AOF across kill -9 and restart with aof-everysec', async () => {
    const server = await redisFor('aof-everysec');
    const client = clientFor(server);
    await client.set('k', 'v');
    await client.incrby('n', 41);
    // With everysec Redis may acknowledge a write before write(2)-ing it to the AOF: while a
    // background fsync runs it postpones the write for up to 2 s. Only a write that left the AOF
    // buffer is safe from kill -9 (docs/design.md, "Redis durability, measured").
    await waitFor('the AOF buffer to be written', async () =>
      /aof_buffer_length:0\r\n/.test(await client.info('persistence')) ? true : undefined,
    );

    await server.kill('SIGKILL');
    await server.restart();

    expect(await getAfterReconnect(client, 'k')).toBe('v');
    expect(await client.get('n')).toBe('41');
    expect(await client.config('GET', 'appendfsync')).toEqual(['appendfsync', 'everysec']);
  });

  it('loses everything on kill -9 without persistence', async () => {
    const server = await redisFor('none');
    const client = clientFor(server);
    await client.set('k', 'v');
    await server.kill('SIGKILL');
    await server.restart();
    expect(await getAfterReconnect(client, 'k')).toBeNull();
  });

  it('wipe() comes back empty on the same port even with AOF', async () => {
    const server = await redisFor('aof-always');
    const client = clientFor(server);
    await client.set('k', 'v');
    const port = server.port;
    await server.wipe();
    expect(server.port).toBe(port);
    expect(await getAfterReconnect(client, 'k')).toBeNull();
  });

  it('restart() of a running server shuts it down cleanly and keeps its data', async () => {
    const server = await redisFor('aof-everysec');
    const client = clientFor(server);
    await client.set('k', 'v');
    await server.restart();
    expect(await getAfterReconnect(client, 'k')).toBe('v');
  });

  it('a SIGSTOPped server times clients out and answers again after SIGCONT', async () => {
    const server = await redisFor('none');
    const client = clientFor(server, { commandTimeout: 200 });
    await client.set('k', 'v');

    await server.kill('SIGSTOP');
    await expect(client.get('k')).rejects.toThrow(/timed out/i);

    await server.kill('SIGCONT');
    expect(await getAfterReconnect(client, 'k')).toBe('v');
  });
});

describe('startPostgres', () => {
  it('keeps committed rows across an immediate stop and a start on the same port', async () => {
    const cluster = await startPostgres();
    onTestFinished(() => cluster.destroy());
    const url = await cluster.createDatabase();
    const pool = new pg.Pool({ connectionString: url });
    pool.on('error', () => undefined); // the immediate stop ends idle connections
    onTestFinished(() => pool.end());

    await pool.query('CREATE TABLE t (id int PRIMARY KEY)');
    await pool.query('INSERT INTO t SELECT generate_series(1, 1000)');

    await cluster.stop('immediate');
    await expect(pool.query('SELECT 1')).rejects.toThrow();
    await cluster.start();

    const rows = await waitFor('PostgreSQL to answer again', async () => {
      const result = await pool.query<{ n: string }>('SELECT count(*) AS n FROM t');
      return result.rows[0]?.n;
    });
    expect(rows).toBe('1000');
  });
});

describe('process clean-up', () => {
  const fixture = new URL('./fixtures/start-servers.ts', import.meta.url).pathname;

  /** Runs the fixture, returns everything it started and the child itself. */
  async function runFixture(mode: 'wait' | 'exit') {
    const child = spawn(process.execPath, ['--import', 'tsx', fixture, mode], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const [line] = (await once(createInterface({ input: child.stdout }), 'line')) as [string];
    const started = JSON.parse(line) as { redisPort: number; postgresPort: number };
    const tree = descendants(child.pid ?? -1);
    return { child, started, tree };
  }

  it('leaves no process behind when the owner is killed, interrupted or exits without stopping', async () => {
    const killed = await runFixture('wait');
    killed.child.kill('SIGKILL');
    const interrupted = await runFixture('wait');
    interrupted.child.kill('SIGINT');
    const exited = await runFixture('exit');

    const runs = [killed, interrupted, exited];
    for (const run of runs) {
      // Two watchdogs, redis-server, the postmaster and its background processes.
      expect(run.tree.length).toBeGreaterThanOrEqual(6);
    }
    const everything = runs.flatMap((run) => run.tree);
    const left = await waitFor(
      'every harness process to end',
      () => (stillAlive(everything).length === 0 ? [] : undefined),
      { timeoutMs: 20_000 },
    );
    expect(left).toHaveLength(0);
  });
});

describe('missing servers', () => {
  it('fail at once with what to install, instead of skipping', async () => {
    const redisServerModule = new URL('./support/redis-server.ts', import.meta.url).pathname;
    // No redis-server on PATH and no Docker engine here: the harness must refuse loudly.
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        '--input-type=module',
        '-e',
        `import { startRedis } from ${JSON.stringify(redisServerModule)}; await startRedis();`,
      ],
      {
        env: { ...process.env, PATH: '/nonexistent', DOCKER_HOST: 'tcp://127.0.0.1:1' },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const [status] = (await once(child, 'exit')) as [number];
    expect(status).not.toBe(0);
    expect(stderr).toMatch(/The test suite needs Redis: install redis-server/);
  });
});

describe('a checkout the postgres user cannot enter', () => {
  it('still starts PostgreSQL: root runs it as postgres, from directories that user can reach', async () => {
    // A copy of the harness in a folder only root can enter (mkdtemp makes it 0700), as a
    // checkout in /root or a `mktemp -d` folder is, with TMPDIR pointing there too.
    const hidden = await mkdtemp(join(tmpdir(), 'tally-hidden-'));
    onTestFinished(() => rm(hidden, { recursive: true, force: true }));
    await cp(new URL('./support', import.meta.url), join(hidden, 'support'), { recursive: true });
    await symlink(
      new URL('../node_modules', import.meta.url).pathname,
      join(hidden, 'node_modules'),
    );
    await writeFile(join(hidden, 'package.json'), '{ "type": "module" }\n');
    const script = join(hidden, 'start.ts');
    await writeFile(
      script,
      "import { startPostgres } from './support/postgres-server.ts';\n" +
        'const server = await startPostgres();\n' +
        'console.log(await server.createDatabase());\n' +
        'await server.destroy();\n',
    );
    const result = await runTypeScript(new URL(`file://${script}`), [], { TMPDIR: hidden });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^postgres:\/\/postgres@127\.0\.0\.1:\d+\/tally_test_/);
  });
});
