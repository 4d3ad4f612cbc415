import { Command, Option } from 'commander';
import type { Logger } from 'pino';
import { maxShards, storeDefaults } from '../config.js';
import { parseBuckets, serviceUrl } from '../process/env-config.js';
import { parseRetention } from '../counters/retention.js';
import { TallyError } from '../errors.js';
import { createLogger, parseLogFormat, parseLogLevel } from '../process/logging.js';
import { strictInteger } from '../process/lifecycle.js';
import { createTally, type Tally } from '../tally.js';

/** The options every command that opens the store takes, with the services' variables. */
export interface StoreOptions {
  redis?: string;
  postgres?: string;
  shards: string;
  keyPrefix: string;
}

export function withStoreOptions(command: Command): Command {
  return command
    .addOption(new Option('--redis <url>', 'Redis URL').env('REDIS_URL'))
    .addOption(new Option('--postgres <url>', 'PostgreSQL URL').env('DATABASE_URL'))
    .addOption(
      new Option('--shards <n>', 'shard count of the store')
        .env('TALLY_SHARDS')
        .default(String(storeDefaults.shards)),
    )
    .addOption(
      new Option('--key-prefix <prefix>', 'Redis key prefix of the store')
        .env('TALLY_KEY_PREFIX')
        .default(storeDefaults.keyPrefix),
    );
}

/** Logs go to stderr, quiet unless asked: stdout carries what a command reports. */
export function cliLogger(): Logger {
  return createLogger({
    level: parseLogLevel(process.env.TALLY_LOG_LEVEL, 'warn'),
    format: parseLogFormat(process.env.TALLY_LOG_FORMAT),
    fd: 2,
  });
}

export function requireOption(value: string | undefined, flag: string, variable: string): string {
  if (value === undefined || value === '') {
    throw new TallyError('CONFIGURATION', `No ${flag}: pass ${flag} <url> or set ${variable}.`);
  }
  return value;
}

/** Opens the store as it is: no rebuild at start-up, so reports see what they are about. */
export function openStore(options: StoreOptions): Promise<Tally> {
  return createTally({
    redis: serviceUrl('REDIS_URL', requireOption(options.redis, '--redis', 'REDIS_URL')),
    postgres: serviceUrl(
      'DATABASE_URL',
      requireOption(options.postgres, '--postgres', 'DATABASE_URL'),
    ),
    shards: strictInteger(options.shards, '--shards (TALLY_SHARDS)', 1, maxShards),
    keyPrefix: options.keyPrefix,
    buckets: parseBuckets(process.env.TALLY_BUCKETS),
    retention: parseRetention(process.env.TALLY_RETENTION),
    // The tools report on a store as it is, an unsafe Redis included: reconcile says what it
    // explains (evictions), status shows the settings.
    redisLossAccepted: 'any',
    logger: cliLogger(),
    rebuildAtStart: false,
  });
}
