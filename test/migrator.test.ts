import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import {
  assertSchemaCurrent,
  createTally,
  loadMigrations,
  migrate,
  SchemaError,
  type Migration,
} from '../src/index.js';
import { createDatabase, startRedis } from './support/index.js';

const tempDirs: string[] = [];
afterAll(async () => {
  for (const dir of tempDirs) await rm(dir, { recursive: true, force: true });
});

async function migrationDir(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'tally-migrations-'));
  tempDirs.push(dir);
  for (const [name, sql] of Object.entries(files)) await writeFile(join(dir, name), sql);
  return dir;
}

let url: string;
beforeEach(async () => {
  url = await createDatabase();
});

async function query<T extends pg.QueryResultRow>(sql: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

describe('migrate', () => {
  it('applies the shipped migrations once, then does nothing', async () => {
    const shipped = await loadMigrations();
    const first = await migrate(url);
    expect(first.applied.map((m) => m.version)).toEqual(shipped.map((m) => m.version));
    expect(first.version).toBe(shipped.length);

    const second = await migrate(url);
    expect(second.applied).toEqual([]);
    expect(second.version).toBe(shipped.length);

    const tables = await query<{ table_name: string }>(
      `SELECT table_name FROM information_schema.tables WHERE table_schema = 'tally'
       ORDER BY table_name`,
    );
    expect(tables.map((t) => t.table_name)).toEqual([
      'applied_batches',
      'bucket_horizons',
      'counter_bucket_rows',
      'counter_buckets',
      'counter_buckets_day',
      'counter_buckets_day_default',
      'counter_buckets_hour',
      'counter_buckets_hour_default',
      'counter_buckets_minute',
      'counter_buckets_minute_default',
      'counter_buckets_month',
      'counter_buckets_month_default',
      'counter_deletion_names',
      'counter_deletions',
      'counter_labels',
      'counter_tombstones',
      'counters',
      'ledger_horizons',
      'redis_losses',
      'schema_migrations',
      'settings',
    ]);
    await expect(assertSchemaCurrent(url)).resolves.toBeUndefined();
  });

  it('is harmless from 10 connections at once: each migration applied exactly once', async () => {
    const results = await Promise.all(Array.from({ length: 10 }, () => migrate(url)));

    const appliedCounts = results.map((r) => r.applied.length);
    const shipped = (await loadMigrations()).length;
    // Exactly one run applied everything; the nine others found the schema current.
    expect(appliedCounts.filter((n) => n === shipped)).toHaveLength(1);
    expect(appliedCounts.filter((n) => n === 0)).toHaveLength(9);
    const rows = await query<{ version: number }>(
      'SELECT version FROM tally.schema_migrations ORDER BY version',
    );
    expect(rows.map((r) => r.version)).toEqual(Array.from({ length: shipped }, (_, i) => i + 1));
  });

  it('applies nothing when one migration of a run fails', async () => {
    const dir = await migrationDir({
      '0001_good.sql': 'CREATE TABLE tally.good (id int);',
      '0002_bad.sql': 'CREATE TABLE tally.bad (id int); SELECT no_such_function();',
    });
    const migrations = await loadMigrations(dir);
    await expect(migrate(url, { migrations })).rejects.toThrow(/no_such_function/);
    const tables = await query(
      `SELECT 1 FROM information_schema.tables WHERE table_name IN ('good', 'bad')`,
    );
    expect(tables).toHaveLength(0);
  });

  it('refuses a schema newer than the code, and a released migration that changed', async () => {
    const v1 = await loadMigrations(await migrationDir({ '0001_a.sql': 'SELECT 1;' }));
    const v2 = await loadMigrations(
      await migrationDir({ '0001_a.sql': 'SELECT 1;', '0002_b.sql': 'SELECT 2;' }),
    );
    await migrate(url, { migrations: v2 });

    const tooNew = migrate(url, { migrations: v1 });
    await expect(tooNew).rejects.toBeInstanceOf(SchemaError);
    await expect(tooNew).rejects.toMatchObject({ code: 'SCHEMA_TOO_NEW' });
    await expect(assertSchemaCurrent(url, v1)).rejects.toMatchObject({ code: 'SCHEMA_TOO_NEW' });

    const edited = await loadMigrations(
      await migrationDir({ '0001_a.sql': 'SELECT 10;', '0002_b.sql': 'SELECT 2;' }),
    );
    await expect(migrate(url, { migrations: edited })).rejects.toMatchObject({
      code: 'MIGRATION_MODIFIED',
    });
  });

  it('lets older code run against a newer schema whose migrations declare it compatible', async () => {
    const base = { '0001_a.sql': 'CREATE TABLE tally.a (x int);' };
    const additive = {
      ...base,
      '0002_b.sql': '-- tally: older code compatible\nCREATE TABLE tally.b (y int);',
    };
    const breaking = { ...additive, '0003_c.sql': 'ALTER TABLE tally.a RENAME COLUMN x TO z;' };
    const load = async (files: Record<string, string>) => loadMigrations(await migrationDir(files));
    const older = await load(base);
    const newer = await load(additive);
    const newest = await load(breaking);
    expect(newer.map((m) => m.olderCodeCompatible)).toEqual([false, true]);

    await migrate(url, { migrations: newer });
    // A rolling deploy: the old replicas restart after `tally migrate` and keep running.
    await expect(assertSchemaCurrent(url, older)).resolves.toBeUndefined();
    await expect(migrate(url, { migrations: older })).resolves.toMatchObject({
      applied: [],
      version: 2,
    });

    await migrate(url, { migrations: newest });
    for (const code of [older, newer]) {
      await expect(assertSchemaCurrent(url, code)).rejects.toMatchObject({
        code: 'SCHEMA_TOO_NEW',
        message: expect.stringMatching(
          /migration 3 \(c\), which older code cannot run against.*ships migration 0003/,
        ) as unknown,
      });
    }
    await expect(assertSchemaCurrent(url, newest)).resolves.toBeUndefined();
  });

  it('a running Tally starts on a newer compatible schema and refuses an incompatible one', async () => {
    const shipped = await loadMigrations();
    const next = (olderCodeCompatible: boolean, sql: string): Migration => ({
      version: shipped.length + 1,
      name: 'next',
      sql,
      checksum: createHash('sha256').update(sql).digest('hex'),
      olderCodeCompatible,
    });
    const redis = await startRedis();
    try {
      const compatible = await createDatabase();
      await migrate(compatible, {
        migrations: [...shipped, next(true, 'CREATE TABLE tally.next_table (x int);')],
      });
      const tally = await createTally({ redis: redis.url, postgres: compatible });
      await tally.close();

      const incompatible = await createDatabase();
      await migrate(incompatible, {
        migrations: [...shipped, next(false, 'ALTER TABLE tally.counters RENAME TO totals;')],
      });
      await expect(createTally({ redis: redis.url, postgres: incompatible })).rejects.toMatchObject(
        { code: 'SCHEMA_TOO_NEW' },
      );
    } finally {
      await redis.stop();
    }
  });

  it('reads a ledger written before migrations declared their compatibility', async () => {
    const shipped = await loadMigrations();
    await migrate(url);
    await query('ALTER TABLE tally.schema_migrations DROP COLUMN older_code_compatible');
    await expect(assertSchemaCurrent(url)).resolves.toBeUndefined();
    expect((await migrate(url)).applied).toEqual([]);
    const rows = await query<{ older_code_compatible: boolean }>(
      'SELECT older_code_compatible FROM tally.schema_migrations',
    );
    expect(rows).toHaveLength(shipped.length);
  });

  it('reports an unmigrated database as out of date', async () => {
    await expect(assertSchemaCurrent(url)).rejects.toMatchObject({ code: 'SCHEMA_OUT_OF_DATE' });
  });
});

describe('loadMigrations', () => {
  it.each([
    ['a gap in the numbering', { '0001_a.sql': '', '0003_c.sql': '' }],
    ['a repeated number', { '0001_a.sql': '', '0001_b.sql': '' }],
    ['a badly named file', { '0001_a.sql': '', '2-b.sql': '' }],
  ])('rejects %s', async (_, files) => {
    await expect(loadMigrations(await migrationDir(files))).rejects.toMatchObject({
      code: 'MIGRATION_FILES_INVALID',
    });
  });
});
