import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import type { Logger } from 'pino';
import { SchemaError } from './errors.js';
import { migrationsDir } from './package-files.js';

/** One numbered, append-only SQL file from migrations/. */
export interface Migration {
  version: number;
  name: string;
  sql: string;
  /** sha256 of the file: a released migration must never change. */
  checksum: string;
}

export interface MigrateResult {
  /** What this call applied, oldest first; empty when the schema was already current. */
  applied: Migration[];
  /** The schema version after the call. */
  version: number;
}

export interface MigrateOptions {
  /** Defaults to the migrations shipped in this package. */
  migrations?: readonly Migration[];
  logger?: Logger;
}

const fileNamePattern = /^(\d{4})_([a-z0-9_]+)\.sql$/;

/**
 * Key of the advisory lock that serialises migration runs ('tally' in ASCII, so it is easy to
 * recognise in pg_locks).
 */
const migrationLockKey = '500152355961';

/** Reads and validates the migration files in `dir`: 0001_name.sql, 0002_name.sql, ... */
export async function loadMigrations(dir: string = migrationsDir): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((file) => file.endsWith('.sql')).sort();
  const migrations: Migration[] = [];
  for (const file of files) {
    const match = fileNamePattern.exec(file);
    if (match?.[1] === undefined || match[2] === undefined) {
      throw new SchemaError(
        'MIGRATION_FILES_INVALID',
        `Migration file ${join(dir, file)} is not named NNNN_lower_snake_name.sql; rename it.`,
      );
    }
    const version = Number(match[1]);
    if (version !== migrations.length + 1) {
      throw new SchemaError(
        'MIGRATION_FILES_INVALID',
        `Migration ${file} should be number ${migrations.length + 1}: migrations are numbered ` +
          `from 0001 without gaps or repeats (${dir}).`,
      );
    }
    const sql = await readFile(join(dir, file), 'utf8');
    const checksum = createHash('sha256').update(sql).digest('hex');
    migrations.push({ version, name: match[2], sql, checksum });
  }
  return migrations;
}

interface AppliedRow {
  version: number;
  name: string;
  checksum: string;
}

/**
 * Compares what the database has applied with what this code knows. Throws when the database
 * holds a migration this code does not have (a newer Tally migrated it) or one whose file has
 * changed since; returns the migrations still to apply.
 */
function pendingMigrations(applied: readonly AppliedRow[], known: readonly Migration[]) {
  for (const row of applied) {
    const migration = known[row.version - 1];
    if (migration === undefined) {
      throw new SchemaError(
        'SCHEMA_TOO_NEW',
        `The database schema is at version ${row.version} (${row.name}) but this Tally only ` +
          `knows versions up to ${known.length}: upgrade Tally instead of running an older one.`,
      );
    }
    if (migration.checksum !== row.checksum) {
      throw new SchemaError(
        'MIGRATION_MODIFIED',
        `Migration ${row.version} (${row.name}) was changed after it was applied. Released ` +
          'migrations are append-only: restore the original file and add a new migration.',
      );
    }
  }
  return known.slice(applied.length);
}

async function withClient<T>(
  db: string | pg.Pool,
  use: (client: pg.ClientBase) => Promise<T>,
): Promise<T> {
  // A connection lost mid-run surfaces as the failed query; without a listener the client's
  // 'error' event would end the process.
  const ignore = () => undefined;
  if (typeof db !== 'string') {
    const client = await db.connect();
    client.on('error', ignore);
    try {
      return await use(client);
    } finally {
      client.off('error', ignore);
      client.release();
    }
  }
  const client = new pg.Client({ connectionString: db });
  client.on('error', ignore);
  await client.connect();
  try {
    return await use(client);
  } finally {
    await client.end();
  }
}

/**
 * Applies every pending migration and records it, all in one transaction under an advisory
 * lock: running it twice, or from many processes at once, applies each migration exactly once,
 * and a failing migration leaves the schema as it was.
 */
export async function migrate(
  db: string | pg.Pool,
  options: MigrateOptions = {},
): Promise<MigrateResult> {
  const known = options.migrations ?? (await loadMigrations());
  return withClient(db, async (client) => {
    await client.query('BEGIN');
    try {
      await client.query('SELECT pg_advisory_xact_lock($1)', [migrationLockKey]);
      await client.query('CREATE SCHEMA IF NOT EXISTS tally');
      await client.query(`
        CREATE TABLE IF NOT EXISTS tally.schema_migrations (
          version integer PRIMARY KEY,
          name text NOT NULL,
          checksum text NOT NULL,
          applied_at timestamptz NOT NULL DEFAULT now()
        )`);
      const { rows } = await client.query<AppliedRow>(
        'SELECT version, name, checksum FROM tally.schema_migrations ORDER BY version',
      );
      const pending = pendingMigrations(rows, known);
      for (const migration of pending) {
        options.logger?.info({ version: migration.version, name: migration.name }, 'migrating');
        await client.query(migration.sql);
        await client.query(
          'INSERT INTO tally.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)',
          [migration.version, migration.name, migration.checksum],
        );
      }
      await client.query('COMMIT');
      return { applied: pending, version: known.length };
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw error;
    }
  });
}

export interface MigrationState {
  version: number;
  name: string;
  appliedAt: Date | null;
}

/** Every migration this code ships, and when (if ever) the database applied it. */
export async function migrationStatus(
  db: string | pg.Pool,
  migrations?: readonly Migration[],
): Promise<MigrationState[]> {
  const known = migrations ?? (await loadMigrations());
  const applied = await withClient(db, async (client) => {
    const exists = await client.query<{ found: boolean }>(
      `SELECT to_regclass('tally.schema_migrations') IS NOT NULL AS found`,
    );
    if (exists.rows[0]?.found !== true) return new Map<number, Date>();
    const result = await client.query<{ version: number; applied_at: Date }>(
      'SELECT version, applied_at FROM tally.schema_migrations',
    );
    return new Map(result.rows.map((row) => [row.version, row.applied_at]));
  });
  return known.map((migration) => ({
    version: migration.version,
    name: migration.name,
    appliedAt: applied.get(migration.version) ?? null,
  }));
}

/**
 * Start-up check for processes that use the schema: throws unless the database is migrated to
 * exactly the version this code knows.
 */
export async function assertSchemaCurrent(
  db: string | pg.Pool,
  migrations?: readonly Migration[],
): Promise<void> {
  const known = migrations ?? (await loadMigrations());
  const applied = await withClient(db, async (client) => {
    const exists = await client.query<{ found: boolean }>(
      `SELECT to_regclass('tally.schema_migrations') IS NOT NULL AS found`,
    );
    if (exists.rows[0]?.found !== true) return [];
    const result = await client.query<AppliedRow>(
      'SELECT version, name, checksum FROM tally.schema_migrations ORDER BY version',
    );
    return result.rows;
  });
  const pending = pendingMigrations(applied, known);
  if (pending.length > 0) {
    throw new SchemaError(
      'SCHEMA_OUT_OF_DATE',
      `The database schema is at version ${applied.length} but this Tally needs version ` +
        `${known.length}: run \`tally migrate\` first.`,
    );
  }
}
