import { Command, Option } from 'commander';
import { pino, type Logger } from 'pino';
import { createTally, type Tally } from '../tally.js';
import { TallyError } from '../errors.js';

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
      new Option('--shards <n>', 'shard count of the store').env('TALLY_SHARDS').default('16'),
    )
    .addOption(
      new Option('--key-prefix <prefix>', 'Redis key prefix of the store')
        .env('TALLY_KEY_PREFIX')
        .default('tally'),
    );
}

/** Logs go to stderr, quiet unless asked: stdout carries what a command reports. */
export function cliLogger(): Logger {
  return pino({ level: process.env.TALLY_LOG_LEVEL ?? 'warn' }, pino.destination(2));
}

export function requireOption(value: string | undefined, flag: string, variable: string): string {
  if (value === undefined || value === '') {
    throw new TallyError('CONFIGURATION', `No ${flag}: pass ${flag} <url> or set ${variable}.`);
  }
  return value;
}

/** Opens the store as it is: no rebuild at start-up, so reports see what they are about. */
export function openStore(options: StoreOptions): Promise<Tally> {
  const shards = Number(options.shards);
  return createTally({
    redis: requireOption(options.redis, '--redis', 'REDIS_URL'),
    postgres: requireOption(options.postgres, '--postgres', 'DATABASE_URL'),
    shards,
    keyPrefix: options.keyPrefix,
    logger: cliLogger(),
    rebuildAtStart: false,
  });
}
