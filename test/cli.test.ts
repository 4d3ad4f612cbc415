import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { hostname, tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTally, loadMigrations, migrate, type Tally } from '../src/index.js';
import { findPostgresBinDir } from './support/binaries.js';
import { runTypeScript } from './support/child-process.js';
import { createDatabase, startRedis, type RedisHandle } from './support/index.js';
import { postgresTotals } from './support/tally-store.js';

const cli = new URL('../src/cli/main.ts', import.meta.url);
const run = promisify(execFile);

let redis: RedisHandle;
let raw: Redis;
beforeAll(async () => {
  redis = await startRedis({ persistence: 'aof-always' });
  raw = new Redis(redis.url);
});
afterAll(async () => {
  await raw.quit();
  await redis.stop();
});

/** A migrated store with a client, and the environment the CLI reads it from. */
async function store() {
  const databaseUrl = await createDatabase();
  await migrate(databaseUrl);
  const keyPrefix = `cli${randomBytes(4).toString('hex')}`;
  const env = {
    REDIS_URL: redis.url,
    DATABASE_URL: databaseUrl,
    TALLY_SHARDS: '4',
    TALLY_KEY_PREFIX: keyPrefix,
  };
  const tally: Tally = await createTally({
    redis: redis.url,
    postgres: databaseUrl,
    shards: 4,
    keyPrefix,
  });
  const tally_ = (args: string[], extra: Record<string, string> = {}) =>
    runTypeScript(cli, args, { ...env, ...extra });
  return { databaseUrl, keyPrefix, env, tally, cli: tally_ };
}

describe('tally CLI', () => {
  it('has --help on every subcommand, and documents the exit codes', async () => {
    for (const command of [
      'migrate',
      'flush',
      'reconcile',
      'status',
      'delete',
      'serve',
      'worker',
    ]) {
      const help = await runTypeScript(cli, [command, '--help']);
      expect(help.code, command).toBe(0);
      expect(help.stdout).toContain(`Usage: tally ${command}`);
    }
    const top = await runTypeScript(cli, ['--help']);
    expect(top.stdout).toMatch(
      /Exit codes: 0 ok, 1 check failed .* 2 usage or\s+configuration error, 3/s,
    );
  });

  it('lists in serve --help and worker --help every variable their configuration reads', async () => {
    const read = async (files: string[]) => {
      const names = new Set<string>();
      for (const file of files) {
        const source = await readFile(new URL(`../${file}`, import.meta.url), 'utf8');
        for (const match of source.matchAll(/(?:env\.|env,\s*')([A-Z][A-Z0-9_]+)/g)) {
          names.add(match[1] ?? '');
        }
      }
      return [...names];
    };
    const services = {
      serve: ['src/process/env-config.ts', 'src/server/serve.ts'],
      worker: ['src/process/env-config.ts', 'src/worker/flush-worker.ts'],
    };
    for (const [command, files] of Object.entries(services)) {
      const variables = await read(files);
      expect(variables.length, command).toBeGreaterThan(10);
      const help = (await runTypeScript(cli, [command, '--help'])).stdout;
      for (const variable of variables) {
        expect(help, `tally ${command} --help lists ${variable}`).toMatch(
          new RegExp(`^  ${variable} `, 'm'),
        );
      }
    }
  });

  it('exits 2 on usage and configuration errors, 3 when a service is unreachable', async () => {
    const { env } = await store();
    const noDatabase = await runTypeScript(cli, ['status'], { ...env, DATABASE_URL: '' });
    expect(noDatabase.code).toBe(2);
    expect(noDatabase.stderr).toMatch(/No --postgres: pass --postgres <url> or set DATABASE_URL/);
    expect((await runTypeScript(cli, ['frobnicate'])).code).toBe(2);
    expect((await runTypeScript(cli, ['status', '--shards', 'many'], env)).code).toBe(2);
    const wrongShards = await runTypeScript(cli, ['status', '--shards', '8'], env);
    expect(wrongShards.code).toBe(2);
    expect(wrongShards.stderr).toMatch(/set up with 4 shards/);
    const unreachable = await runTypeScript(cli, ['status'], {
      ...env,
      REDIS_URL: 'redis://127.0.0.1:1',
    });
    expect(unreachable.code).toBe(3);
  });

  it('resolve-batch takes one decision, and only for a batch the flushes refuse', async () => {
    const { env } = await store();
    const both = await runTypeScript(
      cli,
      ['resolve-batch', '0', 'b1', '--discard', '--apply'],
      env,
    );
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/Pass one of --discard and --apply/);
    const badShard = await runTypeScript(cli, ['resolve-batch', 'x', 'b1', '--discard'], env);
    expect(badShard.code).toBe(2);
    const none = await runTypeScript(cli, ['resolve-batch', '1', 'b1', '--discard'], env);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(
      /Shard 1 has no refused batch "b1" \(none of its batches is refused\)/,
    );
  });

  it('delete lists what would go, deletes only with --yes, and records who asked', async () => {
    const { tally, cli, databaseUrl } = await store();
    try {
      await tally.incr({ name: 'calls', labels: { tenant: 'acme', route: '/a' } }, 2);
      await tally.incr({ name: 'calls', labels: { tenant: 'other', route: '/a' } }, 3);
      await tally.incr('plain', 1);
      const dry = await cli(['delete', 'calls', '--where', 'tenant=acme']);
      expect([dry.code, dry.stdout]).toEqual([
        0,
        'calls{route="/a",tenant="acme"}\nwould delete 1 counter; run again with --yes to delete\n',
      ]);
      expect(await tally.get('calls{route="/a",tenant="acme"}')).toBe(2);
      const done = await cli(['delete', 'calls', '--where', 'tenant=acme', '--yes', '--json']);
      expect(done.code, done.stderr).toBe(0);
      expect(JSON.parse(done.stdout)).toMatchObject({ counters: 1, dryRun: false });
      expect(
        await tally.getMany([
          'calls{route="/a",tenant="acme"}',
          'calls{route="/a",tenant="other"}',
        ]),
      ).toEqual([0, 3]);
      expect((await cli(['delete', 'plain', '--yes'])).stdout).toMatch(
        /^plain\ndeleted 1 counter \(deletion \d+\)\n$/,
      );
      expect(await tally.get('plain')).toBe(0);
      const bad = await cli(['delete', 'calls', '--prefix', 'c']);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toContain('not both');
      const records = await postgresRows(
        databaseUrl,
        'SELECT requested_by FROM tally.counter_deletions ORDER BY id',
      );
      expect(records.map((row) => row.requested_by)).toEqual([
        `cli:${userInfo().username}@${hostname()}`,
        `cli:${userInfo().username}@${hostname()}`,
      ]);
    } finally {
      await tally.close();
    }
  });

  it('migrate applies and lists migrations', async () => {
    const databaseUrl = await createDatabase();
    const before = await runTypeScript(cli, ['migrate', '--status'], { DATABASE_URL: databaseUrl });
    expect(before.stdout).toMatch(/^0001_counters {2}pending$/m);
    const applied = await runTypeScript(cli, ['migrate'], { DATABASE_URL: databaseUrl });
    expect(applied.code).toBe(0);
    expect(applied.stdout).toMatch(/applied 0001_counters/);
    const after = await runTypeScript(cli, ['migrate', '--status', '--postgres', databaseUrl]);
    expect(after.stdout).toMatch(/^0001_counters {2}applied \d{4}-/m);
  });

  it('flush drains every shard and exits 0 with nothing left; status shows it', async () => {
    const s = await store();
    for (let i = 0; i < 20; i++) await s.tally.incr(`f${i % 6}`, i);
    const flushed = await s.cli(['flush']);
    expect(flushed.code).toBe(0);
    expect(flushed.stdout).toMatch(/nothing left to flush/);
    const expected = Object.fromEntries(
      Array.from({ length: 6 }, (_, c) => [
        `f${c}`,
        Array.from({ length: 20 }, (_, i) => i)
          .filter((i) => i % 6 === c)
          .reduce((a, b) => a + b, 0),
      ]),
    );
    expect(Object.fromEntries(await postgresTotals(s.databaseUrl))).toEqual(expected);

    const status = await s.cli(['status', '--json']);
    expect(status.code).toBe(0);
    const parsed = JSON.parse(status.stdout) as {
      schemaVersion: number;
      shards: { pendingDeltas: number; inflightBatch: unknown; lastFlushAt: string | null }[];
    };
    expect(parsed.schemaVersion).toBe((await loadMigrations()).length);
    expect(parsed.shards).toHaveLength(4);
    expect(
      parsed.shards.every((shard) => shard.pendingDeltas === 0 && shard.inflightBatch === null),
    ).toBe(true);
    expect(parsed.shards.some((shard) => shard.lastFlushAt !== null)).toBe(true);
    const human = await s.cli(['status']);
    expect(human.stdout).toMatch(/loss bound: none/);
    // Columns line up, whatever the widths of their cells.
    const rows = human.stdout.split('\n').filter((line) => /^(shard|\d+) /.test(line));
    const columnStarts = (line: string) =>
      [...line.matchAll(/(?<=^|\s{2})\S/g)].map((match) => match.index);
    expect(rows).toHaveLength(5);
    for (const row of rows) expect(columnStarts(row)).toEqual(columnStarts(rows[0] ?? ''));
    // "1 counter", not "1 counters".
    await s.tally.incr('lonely', 1);
    expect((await s.cli(['flush'])).stdout).toMatch(/: batch \S+ 1 counter\b(?!s)/);
    const check = await s.cli(['reconcile']);
    // Shards finish out of order; their lines come in order.
    expect([...check.stderr.matchAll(/^shard (\d+):/gm)].map((m) => Number(m[1]))).toEqual([
      0, 1, 2, 3,
    ]);
    await s.tally.close();
  });

  it('logs readable lines on a terminal and JSON elsewhere', async () => {
    const s = await store();
    const env = { ...process.env, ...s.env, TALLY_LOG_LEVEL: 'info' };
    // `script` runs the command on a pseudo-terminal, as a person's shell would.
    const onTerminal = await run(
      'script',
      ['-qec', `${process.execPath} --import tsx ${cli.pathname} status`, '/dev/null'],
      { env },
    );
    expect(onTerminal.stdout).toMatch(/INFO.*redis durability: none/);
    expect(onTerminal.stdout).not.toContain('{"level"');
    const piped = await s.cli(['status'], { TALLY_LOG_LEVEL: 'info' });
    const logLine = piped.stderr.split('\n').find((line) => line.includes('redis durability'));
    expect(JSON.parse(logLine ?? '')).toMatchObject({ level: 30 });
    await s.tally.close();
  });

  it('reconcile finds injected drift (exit 1), --repair fixes it, and the check then passes', async () => {
    const s = await store();
    await s.tally.incr('d1', 10);
    await s.tally.incr('d2', 20);
    await s.tally.flush();
    for (const key of await raw.keys(`${s.keyPrefix}:*:totals`)) {
      if ((await raw.hexists(key, 'd1')) === 1) await raw.hset(key, 'd1', '999');
    }
    const check = await s.cli(['reconcile', '--json']);
    expect(check.code).toBe(1);
    const report = JSON.parse(check.stdout) as {
      drift: unknown[];
      countersChecked: number;
      mode: string;
    };
    expect(report).toMatchObject({ mode: 'check', countersChecked: 2 });
    expect(report.drift).toEqual([{ counter: 'd1', redisValue: 999, expectedValue: 10 }]);

    const repair = await s.cli(['reconcile', '--repair']);
    expect(repair.code).toBe(0);
    expect(repair.stdout).toMatch(/1 counter drifted, repaired/);
    expect((await s.cli(['reconcile'])).code).toBe(0);
    expect(await s.tally.get('d1')).toBe(10);
    const oneShard = await s.cli(['reconcile', '--shard', '3', '--json']);
    expect(JSON.parse(oneShard.stdout)).toMatchObject({ shards: 1 });
    await s.tally.close();
  });

  it('reconcile after a Redis wipe reports the loss and --repair rebuilds every total', async () => {
    const wiped = await startRedis({ persistence: 'none' });
    const s = await store();
    const env = { REDIS_URL: wiped.url };
    const tally = await createTally({
      redis: wiped.url,
      postgres: s.databaseUrl,
      shards: 4,
      keyPrefix: s.keyPrefix,
    });
    try {
      for (let i = 0; i < 12; i++) await tally.incr(`w${i}`, i + 1);
      await tally.flush();
      await tally.close();
      await wiped.wipe();

      const check = await s.cli(['reconcile', '--json'], env);
      expect(check.code).toBe(1);
      const report = JSON.parse(check.stdout) as { drift: unknown[]; redisLostData: number[] };
      expect(report.redisLostData).toEqual([0, 1, 2, 3]);
      expect(report.drift).toHaveLength(12);
      expect((await s.cli(['reconcile', '--repair'], env)).code).toBe(0);
      const direct = new Redis(wiped.url);
      try {
        const totals: Record<string, string> = {};
        for (const key of await direct.keys(`${s.keyPrefix}:*:totals`))
          Object.assign(totals, await direct.hgetall(key));
        expect(totals).toEqual(
          Object.fromEntries(Array.from({ length: 12 }, (_, i) => [`w${i}`, String(i + 1)])),
        );
      } finally {
        direct.disconnect();
      }
      expect((await s.cli(['reconcile'], env)).code).toBe(0);
    } finally {
      await s.tally.close();
      await wiped.stop();
    }
  });

  it('a loss a process rebuilt at start-up: status names it, reconcile fails until --repair', async () => {
    const wiped = await startRedis({ persistence: 'none' });
    const s = await store();
    const env = { REDIS_URL: wiped.url };
    const options = {
      redis: wiped.url,
      postgres: s.databaseUrl,
      shards: 4,
      keyPrefix: s.keyPrefix,
    };
    try {
      const before = await createTally(options);
      await before.incr('kept', 5);
      await before.flush();
      await before.close();
      await wiped.wipe();
      await (await createTally(options)).close(); // rebuilds every shard, recording the loss

      const status = await s.cli(['status'], env);
      expect(status.stdout).toMatch(/Redis lost the data of shards 0, 1, 2, 3 \(rebuilt since\)/);
      const check = await s.cli(['reconcile'], env);
      expect(check.code).toBe(1);
      expect(check.stdout).toMatch(/shard 2: found empty and rebuilt by a running process at 20/);
      expect((await s.cli(['reconcile'], env)).code).toBe(1); // until a repair reports it

      const repair = await s.cli(['reconcile', '--repair'], env);
      expect(repair.code).toBe(0);
      expect(repair.stdout).toMatch(/found empty and rebuilt by a running process/);
      expect((await s.cli(['reconcile'], env)).code).toBe(0);
      expect((await s.cli(['status'], env)).stdout).not.toMatch(/Redis lost/);
    } finally {
      await s.tally.close();
      await wiped.stop();
    }
  });

  it('reconcile after restoring an older PostgreSQL dump reports what the restore lost', async () => {
    const s = await store();
    const binDir = findPostgresBinDir();
    if (binDir === undefined)
      throw new Error('pg_dump and psql are needed: install the PostgreSQL client');
    const dir = await mkdtemp(join(tmpdir(), 'tally-dump-'));
    const dump = join(dir, 'tally.sql');
    try {
      await s.tally.incr('r', 100);
      await s.tally.flush();
      await run(join(binDir, 'pg_dump'), ['--schema=tally', `--file=${dump}`, s.databaseUrl]);
      await s.tally.incr('r', 23);
      await s.tally.incr('r2', 7);
      await s.tally.flush();

      // Restore the older dump: PostgreSQL forgets the last flush; Redis still has it.
      await run(join(binDir, 'psql'), [s.databaseUrl, '-q', '-c', 'DROP SCHEMA tally CASCADE']);
      await run(join(binDir, 'psql'), [s.databaseUrl, '-q', '-f', dump]);

      const check = await s.cli(['reconcile', '--json']);
      expect(check.code).toBe(1);
      expect(JSON.parse(check.stdout)).toMatchObject({ redisAheadBy: 30 });
      const human = await s.cli(['reconcile']);
      expect(human.stdout).toMatch(/Redis is ahead of PostgreSQL \+ pending deltas by 30/);
      expect((await s.cli(['reconcile', '--repair'])).code).toBe(0);
      expect(await s.tally.getMany(['r', 'r2'])).toEqual([100, 0]);
    } finally {
      await s.tally.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

/** Rows of one statement, on a connection of its own. */
async function postgresRows(url: string, text: string): Promise<Record<string, unknown>[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<Record<string, unknown>>(text)).rows;
  } finally {
    await client.end();
  }
}
