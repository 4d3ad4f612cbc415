import type { TestProject } from 'vitest/node';
import { startPostgres, type PostgresHandle } from './postgres-server.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Maintenance-database URL of the PostgreSQL cluster shared by the whole run. */
    sharedPostgresUrl: string;
  }
}

let cluster: PostgresHandle | undefined;

/** One PostgreSQL cluster per test run; every test file gets its own database on it. */
export async function setup(project: TestProject): Promise<void> {
  cluster = await startPostgres();
  project.provide('sharedPostgresUrl', cluster.url());
}

export async function teardown(): Promise<void> {
  await cluster?.destroy();
}
