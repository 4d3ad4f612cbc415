// Tally's public API. Everything a user may import is named here; nothing else is exported.
export { TallyError, SchemaError, type TallyErrorCode } from './errors.js';
export {
  migrate,
  assertSchemaCurrent,
  loadMigrations,
  type Migration,
  type MigrateOptions,
  type MigrateResult,
} from './migrator.js';
