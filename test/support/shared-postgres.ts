import { inject } from 'vitest';
import { createDatabaseOn } from './postgres-server.js';

/**
 * A fresh, empty database on the run's shared PostgreSQL cluster. Tests that stop or kill
 * PostgreSQL start a private cluster with `startPostgres()` instead, so they never disturb
 * other test files.
 */
export function createDatabase(): Promise<string> {
  return createDatabaseOn(inject('sharedPostgresUrl'));
}
