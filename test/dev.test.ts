/**
 * The newcomer's path: `tally dev` with nothing running starts the whole stack; an increment
 * over HTTP, `tally flush` and a read show the value in PostgreSQL; Ctrl-C leaves no process
 * behind; a second `tally dev` finds the data again.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runTypeScript } from './support/child-process.js';
import { descendants, stillAlive } from './support/process-tree.js';
import { waitFor } from './support/index.js';

const cli = new URL('../src/cli.ts', import.meta.url);
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
async function startDev() {
  const env = { ...process.env };
  delete env.REDIS_URL;
  delete env.DATABASE_URL;
  const child = spawn(
    process.execPath,
    ['--import', tsxLoader, cli.pathname, 'dev', '--port', '0'],
    {
      cwd: workDir,
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

    const started = descendants(first.pid);
    expect(started.length).toBeGreaterThanOrEqual(2); // redis-server, postmaster (+ backends)
    process.kill(-first.pid, 'SIGINT'); // Ctrl-C: the whole foreground process group
    const [code] = await first.exited;
    expect(code).toBe(0);
    await waitFor('every process tally dev started to end', () =>
      stillAlive(started).length === 0 ? true : undefined,
    );

    const second = await startDev();
    try {
      const again = (await (await fetch(`${second.api}/v1/counters/hello`)).json()) as {
        value: number;
      };
      expect(again.value).toBe(42);
    } finally {
      process.kill(-second.pid, 'SIGINT');
      expect((await second.exited)[0]).toBe(0);
    }
  }, 180_000);
});
