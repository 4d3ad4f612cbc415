import { Command, CommanderError, Option } from 'commander';
import { resolve } from 'node:path';
import { packageVersion } from './package-files.js';
import { flushCommand, migrateCommand, reconcileCommand, statusCommand } from './cli/commands.js';
import { ExitCode, exitCodeFor } from './cli/exit-codes.js';
import { withStoreOptions } from './cli/store-options.js';
import { redactSecrets } from './logging.js';

// `tally status | head` closes stdout early: that is the reader's choice, not an error.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw error;
});

const exitCodesHelp = `
Exit codes: 0 ok, 1 check failed (drift found, something left to flush), 2 usage or
configuration error, 3 Redis or PostgreSQL unavailable.`;

/** Runs a command's action and turns its answer (or failure) into the exit code. */
function action<A extends unknown[]>(run: (...args: A) => Promise<number | undefined>) {
  return async (...args: A) => {
    process.exitCode = (await run(...args)) ?? ExitCode.ok;
  };
}

const program = new Command('tally')
  .description('Write-behind counters: Redis for increments, PostgreSQL for the record.')
  .version(packageVersion)
  .showHelpAfterError()
  .addHelpText('after', exitCodesHelp)
  .exitOverride();

program
  .command('migrate')
  .description('apply pending SQL migrations (safe to run concurrently and repeatedly)')
  .addOption(new Option('--postgres <url>', 'PostgreSQL URL').env('DATABASE_URL'))
  .option('--status', 'list the migrations and whether each is applied; change nothing')
  .action(action(migrateCommand));

withStoreOptions(
  program
    .command('flush')
    .description('flush every shard now (pending and in flight); exit 0 once nothing is left'),
).action(action(flushCommand));

withStoreOptions(
  program
    .command('reconcile')
    .description('check Redis totals against PostgreSQL (exit 1 on drift); --repair rewrites Redis')
    .option('--repair', 'rewrite drifted totals (safe under load)')
    .option('--json', 'print the report as JSON')
    .option('--shard <n>', 'only this shard'),
).action(action(reconcileCommand));

withStoreOptions(
  program
    .command('status')
    .description('per shard: pending, flush lag, in-flight batch, last flush; Redis durability')
    .option('--json', 'print the status as JSON'),
).action(action(statusCommand));

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

program
  .command('dev')
  .description(
    'run the whole stack locally: Redis and PostgreSQL (private ones unless REDIS_URL / ' +
      'DATABASE_URL are set), migrations, the API and a worker',
  )
  .option('--load <rate>', 'demo increments per second', '0')
  .addOption(new Option('--port <port>', 'API port').env('PORT').default('8080'))
  .option('--data-dir <dir>', 'where the private servers keep their data', '.tally-dev')
  .action(async (options: { load: string; port: string; dataDir: string }) => {
    const { runDev } = await import('./dev/dev-command.js');
    await runDev({
      load: Number(options.load),
      port: Number(options.port),
      dataDir: resolve(options.dataDir),
    });
  });

try {
  await program.parseAsync();
} catch (error) {
  if (error instanceof CommanderError) {
    // --help and --version end here too, with exit code 0; usage errors were already printed.
    process.exitCode = error.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
  } else {
    const code = (error as { code?: unknown }).code;
    const suffix = typeof code === 'string' ? ` [${code}]` : '';
    const message = error instanceof Error ? error.message : String(error);
    console.error(`tally: ${redactSecrets(message)}${suffix}`);
    // At once: a half-started service (a Redis connection retrying, a pool) must not keep the
    // process running after it failed to start.
    process.exit(exitCodeFor(error));
  }
}
