import { Command } from 'commander';
import { pino } from 'pino';
import { TallyError } from './errors.js';
import { migrate } from './migrator.js';
import { packageVersion } from './package-files.js';

// Logs go to stderr so that stdout carries only what a command reports.
const logger = pino({ level: process.env.TALLY_LOG_LEVEL ?? 'info' }, pino.destination(2));

function postgresOption(command: Command): Command {
  return command.option(
    '--postgres <url>',
    'PostgreSQL connection URL (default: $TALLY_POSTGRES_URL)',
    process.env.TALLY_POSTGRES_URL,
  );
}

function requirePostgres(url: string | undefined): string {
  if (url === undefined || url === '') {
    throw new Error('No PostgreSQL URL: pass --postgres <url> or set TALLY_POSTGRES_URL.');
  }
  return url;
}

const program = new Command('tally')
  .description('Write-behind counters: Redis for increments, PostgreSQL for the record.')
  .version(packageVersion)
  .showHelpAfterError();

postgresOption(
  program
    .command('migrate')
    .description('apply pending SQL migrations (safe to run concurrently and repeatedly)'),
).action(async (options: { postgres?: string }) => {
  const result = await migrate(requirePostgres(options.postgres), { logger });
  const names = result.applied.map((m) => `${String(m.version).padStart(4, '0')}_${m.name}`);
  console.log(
    names.length === 0
      ? `schema is current at version ${result.version}`
      : `applied ${names.join(', ')}; schema is at version ${result.version}`,
  );
});

program
  .command('worker')
  .description('run a flush worker until SIGTERM/SIGINT (configured from the environment)')
  .addHelpText(
    'after',
    `
Environment:
  REDIS_URL                   Redis URL (required)
  DATABASE_URL                PostgreSQL URL (required)
  TALLY_SHARDS                shard count of the store (default 16)
  TALLY_KEY_PREFIX            Redis key prefix of the store (default tally)
  TALLY_FLUSH_INTERVAL_MS     how often each shard is flushed (default 1000)
  TALLY_WORKER_CONCURRENCY    flush jobs one replica runs at once (default 4)
  TALLY_METRICS_PORT          port of /metrics and /healthz (default: none)
  TALLY_SHUTDOWN_TIMEOUT_MS   longest graceful shutdown before exiting 1 (default 30000)
  TALLY_JOB_LOCK_MS           BullMQ job lock; a silent replica loses its job after it (default 30000)
  TALLY_FLUSH_LOCK_TTL_MS     the engine's shard lock TTL (default 30000)
  TALLY_LOG_LEVEL             pino level (default info)`,
  )
  .action(async () => {
    const { runFlushWorker } = await import('../workers/flush-worker.js');
    await runFlushWorker();
  });

program
  .command('serve')
  .description('run the HTTP API until SIGTERM/SIGINT (configured from the environment)')
  .addHelpText(
    'after',
    `
Environment:
  REDIS_URL, DATABASE_URL     the store (required)
  PORT, HOST                  where to listen (default 8080, 127.0.0.1)
  TALLY_API_TOKEN             bearer tokens, comma-separated; unset: no authentication
  TALLY_SHARDS                shard count of the store (default 16)
  TALLY_KEY_PREFIX            Redis key prefix of the store (default tally)
  TALLY_BODY_LIMIT_BYTES      largest request body (default 1048576)
  TALLY_MAX_BATCH             most increments or counters per request (default 1000)
  TALLY_SHUTDOWN_TIMEOUT_MS   longest graceful shutdown before exiting 1 (default 30000)
  TALLY_LOG_LEVEL             pino level (default info)`,
  )
  .action(async () => {
    const { runServer } = await import('./server/serve.js');
    await runServer();
  });

try {
  await program.parseAsync();
} catch (error) {
  const code = error instanceof TallyError ? ` [${error.code}]` : '';
  console.error(`tally: ${error instanceof Error ? error.message : String(error)}${code}`);
  process.exitCode = 1;
}
