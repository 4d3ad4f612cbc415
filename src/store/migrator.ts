import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type pg from 'pg';
import type { Logger } from 'pino';
import { SchemaError } from '../errors.js';
import { migrationsDir } from '../package-files.js';
import { migrationSql } from './sql.js';
import { withClient, withTransaction } from './transaction.js';

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
 * Applies every pending migration and records it, all in one transaction under an advisory
 * lock: running it twice, or from many processes at once, applies each migration exactly once,
 * and a failing migration leaves the schema as it was.
 */
export async function migrate(
  db: string | pg.Pool,
  options: MigrateOptions = {},
): Promise<MigrateResult> {
  const known = options.migrations ?? (await loadMigrations());
  return withTransaction(db, async (client) => {
    await client.query(migrationSql.lock);
    await client.query(migrationSql.createSchema);
    for (const statement of migrationSql.createLedger) await client.query(statement);
    const { rows } = await client.query<AppliedRow>(migrationSql.applied);
    const pending = pendingMigrations(rows, known);
    for (const migration of pending) {
      options.logger?.info({ version: migration.version, name: migration.name }, 'migrating');
      await client.query(migration.sql);
      await client.query(migrationSql.record, [
        migration.version,
        migration.name,
        migration.checksum,
        migration.olderCodeCompatible,
      ]);
    }
    return {
      applied: pending,
      version: Math.max(known.length, ...rows.map((row) => row.version)),
    };
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
    const exists = await client.query<{ found: boolean }>(migrationSql.ledgerExists);
    if (exists.rows[0]?.found !== true) return new Map<number, Date>();
    const result = await client.query<{ version: number; applied_at: Date }>(
      migrationSql.appliedAt,
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
    const exists = await client.query<{ found: boolean }>(migrationSql.ledgerExists);
    if (exists.rows[0]?.found !== true) return [];
    const column = await client.query(migrationSql.ledgerHasCompatibility);
    const result = await client.query<AppliedRow>(
      column.rowCount === 1 ? migrationSql.applied : migrationSql.appliedBeforeCompatibility,
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
