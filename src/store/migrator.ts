import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import type { Logger } from 'pino';
import { SchemaError } from '../errors.js';
import { migrationsDir } from '../process/package-files.js';

/** One numbered, append-only SQL file from migrations/. */
export interface Migration {
  version: number;
  name: string;
  sql: string;
  /** sha256 of the file: a released migration must never change. */
  checksum: string;
  /**
   * Code that predates this migration may keep running against the schema it makes (additive
   * changes: a new table, a new nullable column). Declared in the file by a line
   * `-- tally: older code compatible`; without it, older code refuses the schema.
   */
  olderCodeCompatible: boolean;
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
const compatibleDirective = /^-- tally: older code compatible\s*$/m;

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
    migrations.push({
      version,
      name: match[2],
      sql,
      checksum,
      olderCodeCompatible: compatibleDirective.test(sql),
    });
  }
  return migrations;
}

interface AppliedRow {
  version: number;
  name: string;
  checksum: string;
  /** As the migration declared when it was applied (false for rows from before the column). */
  older_code_compatible: boolean;
}

/**
 * Compares what the database has applied with what this code knows, and returns the
 * migrations still to apply. A migration this code does not have (a newer Tally applied it) is
 * accepted when it declared older code compatible — a rolling deploy's old replicas keep
 * running after `tally migrate` — and refused otherwise, naming the version needed; a known
 * migration whose file changed since it was applied is refused.
 */
function pendingMigrations(applied: readonly AppliedRow[], known: readonly Migration[]) {
  for (const row of applied) {
    const migration = known[row.version - 1];
    if (migration === undefined) {
      if (row.older_code_compatible) continue;
      throw new SchemaError(
        'SCHEMA_TOO_NEW',
        `The database schema has migration ${row.version} (${row.name}), which older code ` +
          `cannot run against, but this Tally only knows versions up to ${known.length}: ` +
          `run a Tally that ships migration ${String(row.version).padStart(4, '0')}.`,
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
  const done = new Set(applied.map((row) => row.version));
  return known.filter((migration) => !done.has(migration.version));
}

/**
 * The ledger of applied migrations, and the column that says which of them older code may run
 * against (added to ledgers made before it existed: their rows say false, which only matters to
 * code that does not know them, and none does).
 */
const ledgerStatements = [
  `CREATE TABLE IF NOT EXISTS tally.schema_migrations (
     version integer PRIMARY KEY,
     name text NOT NULL,
     checksum text NOT NULL,
     applied_at timestamptz NOT NULL DEFAULT now()
   )`,
  `ALTER TABLE tally.schema_migrations
     ADD COLUMN IF NOT EXISTS older_code_compatible boolean NOT NULL DEFAULT false`,
];

const appliedRowsQuery = `SELECT version, name, checksum, older_code_compatible
                          FROM tally.schema_migrations ORDER BY version`;

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
      for (const statement of ledgerStatements) await client.query(statement);
      const { rows } = await client.query<AppliedRow>(appliedRowsQuery);
      const pending = pendingMigrations(rows, known);
      for (const migration of pending) {
        options.logger?.info({ version: migration.version, name: migration.name }, 'migrating');
        await client.query(migration.sql);
        await client.query(
          `INSERT INTO tally.schema_migrations (version, name, checksum, older_code_compatible)
           VALUES ($1, $2, $3, $4)`,
          [migration.version, migration.name, migration.checksum, migration.olderCodeCompatible],
        );
      }
      await client.query('COMMIT');
      return {
        applied: pending,
        version: Math.max(known.length, ...rows.map((row) => row.version)),
      };
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
 * Start-up check for processes that use the schema: throws unless the database has every
 * migration this code knows, and no newer one that older code cannot run against.
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
    // A ledger made before the compatibility column: its rows are all known to this code.
    const column = await client.query(
      `SELECT 1 FROM information_schema.columns WHERE table_schema = 'tally'
         AND table_name = 'schema_migrations' AND column_name = 'older_code_compatible'`,
    );
    const result = await client.query<AppliedRow>(
      column.rowCount === 1
        ? appliedRowsQuery
        : `SELECT version, name, checksum, false AS older_code_compatible
           FROM tally.schema_migrations ORDER BY version`,
    );
    return result.rows;
  });
  const pending = pendingMigrations(applied, known);
  if (pending.length > 0) {
    throw new SchemaError(
      'SCHEMA_OUT_OF_DATE',
      `The database schema lacks migration ${pending[0]?.version ?? '?'} of the ` +
        `${known.length} this Tally needs: run \`tally migrate\` first.`,
    );
  }
}
