// The servers and settings every benchmark of one run shares.
import { migrate } from '../../src/index.js';
import type { PostgresHandle, RedisHandle } from '../../test/support/index.js';

export interface BenchContext {
  redis: RedisHandle;
  postgres: PostgresHandle;
  /** Seconds each throughput measurement runs. */
  seconds: number;
  /** Smaller sizes, for a smoke run of the suite. */
  quick: boolean;
}

/** A fresh, migrated database (each benchmark starts from empty tables). */
export async function freshDatabase(ctx: BenchContext): Promise<string> {
  const url = await ctx.postgres.createDatabase();
  await migrate(url);
  return url;
}
