/**
 * The newcomer's path: `tally dev` with nothing running starts the whole stack; an increment
 * over HTTP, `tally flush` and a read show the value in PostgreSQL; Ctrl-C leaves no process
 * behind; a second `tally dev` finds the data again.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runTypeScript } from './support/child-process.js';
import { descendants, stillAlive } from './support/process-tree.js';
import { waitFor } from './support/index.js';

const cli = new URL('../src/cli/main.ts', import.meta.url);
// tally dev runs in a directory of its own, where `--import tsx` would not resolve.
const tsxLoader = new URL('../node_modules/tsx/dist/loader.mjs', import.meta.url).href;

let workDir: string;
beforeAll(async () => {
  workDir = await mkdtemp(join(tmpdir(), 'tally-dev-'));
  await chmod(workDir, 0o755); // the postgres user must reach .tally-dev/ inside it
});
afterAll(async () => {
  await rm(workDir, { recursive: true, force: true });
});

/** Starts `tally dev` as a terminal would: in a process group of its own. */
async function startDev(args: string[] = [], cwd = workDir) {
  const env = { ...process.env };
  delete env.REDIS_URL;
  delete env.DATABASE_URL;
  const child = spawn(
    process.execPath,
    ['--import', tsxLoader, cli.pathname, 'dev', '--port', '0', ...args],
    {
      cwd,
      env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const lines: string[] = [];
  createInterface({ input: child.stdout }).on('line', (line) => lines.push(line));
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  const value = (label: string) =>
    waitFor(
      `tally dev to print ${label}`,
      () => {
        if (child.exitCode !== null) throw new Error(`tally dev exited: ${stderr}`);
        return lines
          .find((line) => line.trim().startsWith(label))
          ?.split(/\s+/)
          .at(-1);
      },
      { timeoutMs: 60_000 },
    );
  return {
    pid: child.pid ?? -1,
    lines,
    stderr: () => stderr,
    exited,
    api: await value('API:'),
    redisUrl: await value('REDIS_URL:'),
    databaseUrl: await value('DATABASE_URL:'),
  };
}

describe('tally dev', () => {
  it('runs the stack, counts into PostgreSQL, stops on Ctrl-C leaving nothing, and keeps its data', async () => {
    const first = await startDev();
    const increment = await fetch(`${first.api}/v1/counters/hello/increment`, { method: 'POST' });
    expect(increment.status).toBe(200);
    await fetch(`${first.api}/v1/counters/hello/increment`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ by: 41 }),
    });

    const flush = await runTypeScript(cli, ['flush'], {
      REDIS_URL: first.redisUrl,
      DATABASE_URL: first.databaseUrl,
    });
    expect(flush.code).toBe(0);
    const client = new pg.Client({ connectionString: first.databaseUrl });
    await client.connect();
    const { rows } = await client.query<{ value: string }>(
      `SELECT value FROM tally.counters WHERE name = 'hello'`,
    );
    await client.end();
    expect(rows[0]?.value).toBe('42');
    const read = (await (await fetch(`${first.api}/v1/counters/hello`)).json()) as {
      value: number;
    };
    expect(read.value).toBe(42);
    await waitFor('the live status line', () =>
      first.lines.find((line) => /increments\/s \| \d+ deltas pending \| flush lag/.test(line)),
    );
    expect(first.lines).toContain(
      `  for the CLI: export REDIS_URL=${first.redisUrl} DATABASE_URL=${first.databaseUrl}`,
    );

    // A second tally dev on the same folder says at once that one runs.
    const twice = spawn(process.execPath, ['--import', tsxLoader, cli.pathname, 'dev'], {
      cwd: workDir,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let twiceErr = '';
    twice.stderr.on('data', (chunk: Buffer) => (twiceErr += chunk.toString()));
    const [twiceCode] = (await once(twice, 'exit')) as [number];
    expect(twiceCode).toBe(2);
    expect(twiceErr).toMatch(
      new RegExp(`tally dev is already running on .* \\(pid ${first.pid}\\)`),
    );

    // Redis stops answering: the live line says so, with no stack.
    const redisPid = descendants(first.pid).find((pid) =>
      readFileSync(`/proc/${pid}/comm`, 'utf8').startsWith('redis-server'),
    );
    expect(redisPid).toBeDefined();
    process.kill(redisPid ?? 0, 'SIGSTOP');
    try {
      await waitFor(
        'the live line to say Redis is unreachable',
        () => first.lines.find((line) => line === 'Redis unreachable'),
        { timeoutMs: 15_000 },
      );
    } finally {
      process.kill(redisPid ?? 0, 'SIGCONT');
    }
    expect(first.stderr()).not.toMatch(/\n\s+at /);

    const started = descendants(first.pid);
    expect(started.length).toBeGreaterThanOrEqual(2); // redis-server, postmaster (+ backends)
    process.kill(-first.pid, 'SIGINT'); // Ctrl-C: the whole foreground process group
    const [code] = await first.exited;
    expect(code).toBe(0);
    await waitFor('every process tally dev started to end', () =>
      stillAlive(started).length === 0 ? true : undefined,
    );

    const second = await startDev(['--load', '20']);
    try {
      const again = (await (await fetch(`${second.api}/v1/counters/hello`)).json()) as {
        value: number;
      };
      expect(again.value).toBe(42);
      // The same URLs as the first run: an exported line stays right.
      expect([second.redisUrl, second.databaseUrl]).toEqual([first.redisUrl, first.databaseUrl]);
      expect(second.lines).toContain(
        '  demo load: 20 increments/s to demo_requests{tenant="t0"} … demo_requests{tenant="t4"}',
      );
    } finally {
      process.kill(-second.pid, 'SIGINT');
      expect((await second.exited)[0]).toBe(0);
    }
  }, 180_000);

  it('keeps PostgreSQL where the postgres user can reach it when the data folder is not', async () => {
    // A folder only root can enter, as a checkout in /root or a `mktemp -d` folder is.
    const hidden = await mkdtemp(join(tmpdir(), 'tally-dev-hidden-'));
    const dev = await startDev([], hidden);
    try {
      const note = dev.lines.find((line) => line.includes("PostgreSQL's data is in"));
      expect(note).toMatch(
        new RegExp(
          `note: PostgreSQL's data is in /var/tmp/tally-dev-postgres-\\w+: the postgres user cannot enter ${hidden}`,
        ),
      );
      expect(
        (await fetch(`${dev.api}/v1/counters/hidden/increment`, { method: 'POST' })).status,
      ).toBe(200);
    } finally {
      process.kill(-dev.pid, 'SIGINT');
      expect((await dev.exited)[0]).toBe(0);
      await rm(hidden, { recursive: true, force: true });
      const home = /\/var\/tmp\/tally-dev-postgres-\w+/.exec(dev.lines.join('\n'))?.[0];
      if (home !== undefined) await rm(home, { recursive: true, force: true });
    }
  }, 120_000);

  it('--redis-cluster starts a local Redis Cluster (3 + 3), counts on it, and finds it again', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tally-dev-cluster-'));
    await chmod(dir, 0o755);
    try {
      const first = await startDev(['--redis-cluster'], dir);
      expect(first.redisUrl).toMatch(/^redis\+cluster:\/\/(127\.0\.0\.1:\d+,){5}127\.0\.0\.1:\d+$/);
      // Every node's role reaches the others by gossip, a moment after the cluster is made.
      const status = await waitFor('tally status to read all six servers', async () => {
        const run = await runTypeScript(cli, ['status', '--json'], {
          REDIS_URL: first.redisUrl,
          DATABASE_URL: first.databaseUrl,
        });
        const report = JSON.parse(run.stdout) as { redis: { servers: number } };
        return run.code === 0 && report.redis.servers === 6 ? report : undefined;
      });
      expect(status).toMatchObject({ redis: { servers: 6, durable: true } });
      for (let i = 0; i < 16; i++) {
        const counter = `cluster-${i}`;
        const response = await fetch(`${first.api}/v1/counters/${counter}/increment`, {
          method: 'POST',
        });
        expect(response.status).toBe(200);
      }
      process.kill(-first.pid, 'SIGINT');
      expect((await first.exited)[0]).toBe(0);

      const second = await startDev(['--redis-cluster'], dir);
      try {
        expect(second.redisUrl).toBe(first.redisUrl);
        const read = (await (await fetch(`${second.api}/v1/counters/cluster-7`)).json()) as {
          value: number;
        };
        expect(read.value).toBe(1);
      } finally {
        process.kill(-second.pid, 'SIGINT');
        expect((await second.exited)[0]).toBe(0);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
