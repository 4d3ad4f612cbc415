import { Command, CommanderError, Option } from 'commander';
import { resolve } from 'node:path';
import { packageVersion } from '../package-files.js';
import {
  deleteCommand,
  flushCommand,
  migrateCommand,
  reconcileCommand,
  resolveBatchCommand,
  statusCommand,
} from './commands.js';
import { ExitCode, exitCodeFor } from './exit-codes.js';
import { usageCommand } from './usage-command.js';
import { environmentHelp, serveVariables, workerVariables } from './service-variables.js';
import { withStoreOptions } from './store-options.js';
import { redactSecrets } from '../process/logging.js';

// `tally status | head` closes stdout early: that is the reader's choice, not an error.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw error;
});

const exitCodesHelp = `
Exit codes: 0 ok, 1 check failed (drift found, something left to flush), 2 usage or
configuration error, 3 Redis or PostgreSQL unavailable.`;

/** Collects a repeated option's values. */
const collect = (value: string, previous: string[] = []) => [...previous, value];

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

withStoreOptions(
  program
    .command('resolve-batch')
    .description(
      'settle an in-flight batch the flushes refuse (BATCH_REFUSED): --discard drops it and ' +
        'rebuilds the shard from PostgreSQL, --apply applies it (it may count twice)',
    )
    .argument('<shard>', 'the shard, as tally status names it')
    .argument('<batch-id>', 'the refused batch, as tally status names it')
    .option('--discard', 'drop the batch: right when it had been applied already')
    .option('--apply', 'apply the batch: right when it never had been'),
).action(action(resolveBatchCommand));

withStoreOptions(
  program
    .command('usage')
    .description(
      'usage of many counters, filtered and grouped by labels, per calendar window: a table ' +
        '(on a terminal), CSV or JSON, every row streamed',
    )
    .argument('[counter]', 'the base name of labelled counters (or use --prefix)')
    .option('--prefix <prefix>', 'plain (unlabelled) names starting with this, one row each')
    .option(
      '--where <label=value>',
      'only counters with this label value; repeat for more labels, or the same label for any of several values',
      collect,
    )
    .option('--group-by <labels>', 'comma-separated label keys to group by')
    .requiredOption(
      '--from <date>',
      'start, inclusive: 2026-11-01 (on --time-zone’s calendar) or an ISO 8601 instant',
    )
    .requiredOption('--to <date>', 'end, exclusive')
    .option('--granularity <g>', 'minute, hour, day, month or total', 'day')
    .option('--time-zone <zone>', 'IANA time zone of the windows', 'UTC')
    .option('--order-by <by>', 'group (streams every row) or value (the top --limit rows)')
    .option('--order <order>', 'asc or desc')
    .option('--limit <n>', 'at most this many groups')
    .option('--cursor <cursor>', 'start after the rows a previous page ended with')
    .option('--format <format>', 'table, csv or json (default: table on a terminal, else csv)')
    .option('--output <file>', 'write to this file instead of stdout'),
).action(action(usageCommand));

withStoreOptions(
  program
    .command('delete')
    .description(
      'delete counters for good (a tenant that left): lists what would go; --yes deletes it ' +
        'and records the deletion in PostgreSQL',
    )
    .argument('[counter]', 'a counter name; with --where, the base name of labelled counters')
    .option('--prefix <prefix>', 'plain (unlabelled) counters whose names start with this')
    .option(
      '--where <label=value>',
      "the base name's labelled counters with this label value; repeat for more labels",
      collect,
    )
    .option('--yes', 'delete (without it, only list what would go)')
    .option('--json', 'print the result as JSON'),
).action(action(deleteCommand));

program
  .command('worker')
  .description('run a flush worker until SIGTERM/SIGINT (configured from the environment)')
  .addHelpText('after', environmentHelp(workerVariables))
  .action(async () => {
    const { runFlushWorker } = await import('../worker/flush-worker.js');
    await runFlushWorker();
  });

program
  .command('serve')
  .description('run the HTTP API until SIGTERM/SIGINT (configured from the environment)')
  .addHelpText('after', environmentHelp(serveVariables))
  .action(async () => {
    const { runServer } = await import('../server/serve.js');
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
  .option('--redis-cluster', 'start a local Redis Cluster (3 primaries, 3 replicas), not one Redis')
  .action(
    async (options: { load: string; port: string; dataDir: string; redisCluster?: boolean }) => {
      const { runDev } = await import('../dev/dev-command.js');
      await runDev({
        load: Number(options.load),
        port: Number(options.port),
        dataDir: resolve(options.dataDir),
        redisCluster: options.redisCluster === true,
      });
    },
  );

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
