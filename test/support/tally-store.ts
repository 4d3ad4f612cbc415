import { randomBytes } from 'node:crypto';
import { createTally, migrate, type Tally, type TallyOptions } from '../../src/index.js';

/**
 * A Tally client on its own namespace: a fresh key prefix on the given Redis and the given,
 * migrated, database. Closed by the returned `close`.
 */
export async function tallyOn(
  redisUrl: string,
  postgresUrl: string,
  options: Partial<TallyOptions> = {},
): Promise<Tally> {
  await migrate(postgresUrl);
  return createTally({
    redis: redisUrl,
    postgres: postgresUrl,
    keyPrefix: `t${randomBytes(4).toString('hex')}`,
    ...options,
  });
}
