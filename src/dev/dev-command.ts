import { join } from 'node:path';
import type { Logger } from 'pino';
import { storeDefaults } from '../config.js';
import { parseBuckets } from '../process/env-config.js';
import { TallyError } from '../errors.js';
import { createLogger, parseLogFormat, parseLogLevel, redactSecrets } from '../process/logging.js';
import { claimDataDir, rememberedClusterPorts, rememberedPort } from './dev-state.js';
import { configFromEnv as workerConfigFromEnv, startFlushWorker } from '../worker/flush-worker.js';
import { migrate } from '../store/migrator.js';
import { closeInOrder, exitOnSignals } from '../process/lifecycle.js';
import { buildApi } from '../server/api.js';
import { createTally, type Tally } from '../tally.js';
import {
  hasLocalBinaries,
  startContainerServers,
  startLocalPostgres,
  startLocalRedis,
  startLocalRedisCluster,
  type LocalServer,
} from './local-servers.js';

export interface DevOptions {
  /** Demo increments per second (0: none). */
  load: number;
  port: number;
  /** Where the private servers keep their data (reused by the next run). */
  dataDir: string;
  /** Start a local Redis Cluster (3 primaries, 3 replicas) instead of one Redis. */
  redisCluster?: boolean;
}

const flushIntervalMs = 1_000;
const { keyPrefix, shards } = storeDefaults;

/** Which server a failed status read points at, for the live line. */
function unreachableServer(error: TallyError): string {
  if (/PostgreSQL/.test(error.message)) return 'PostgreSQL unreachable';
  if (/Redis/.test(error.message)) return 'Redis unreachable';
  return `status unavailable (${error.code})`;
}

/** Redis and PostgreSQL: the ones REDIS_URL / DATABASE_URL name, else private ones. */
async function storeServers(options: DevOptions, say: (line: string) => void) {
  const started: LocalServer[] = [];
  const given = (name: string) => {
    const value = process.env[name];
    return value === undefined || value === '' ? undefined : value;
  };
  const own = async (start: () => Promise<LocalServer>) => {
    const server = await start();
    started.push(server);
    return server.url;
  };
  // Local binaries first; containers when they are missing and Docker answers.
  const local = hasLocalBinaries();
  const containers =
    (given('REDIS_URL') === undefined && !local.redis) ||
    (given('DATABASE_URL') === undefined && !local.postgres)
      ? await startContainerServers(options.dataDir, {
          redis: given('REDIS_URL') === undefined && !local.redis,
          postgres: given('DATABASE_URL') === undefined && !local.postgres,
        })
      : {};
  const redisUrl =
    given('REDIS_URL') ??
    (await own(async () => {
      if (options.redisCluster === true) {
        const { ports, fresh } = await rememberedClusterPorts(options.dataDir);
        return startLocalRedisCluster(join(options.dataDir, 'redis-cluster'), ports, fresh);
      }
      return (
        containers.redis ??
        startLocalRedis(
          join(options.dataDir, 'redis'),
          await rememberedPort(options.dataDir, 'redis'),
        )
      );
    }));
  const databaseUrl =
    given('DATABASE_URL') ??
    (await own(
      async () =>
        containers.postgres ??
        startLocalPostgres(
          join(options.dataDir, 'postgres'),
          await rememberedPort(options.dataDir, 'postgres'),
          say,
        ),
    ));
  return { redisUrl, databaseUrl, started };
}

/** Where everything is, and what to try first. */
function printBanner(
  say: (line: string) => void,
  {
    dataDir,
    apiUrl,
    redisUrl,
    databaseUrl,
    tally,
  }: {
    dataDir: string;
    apiUrl: string;
    redisUrl: string;
    databaseUrl: string;
    tally: Tally;
  },
) {
  say(`tally dev is running (Ctrl-C stops it; data in ${dataDir})`);
  say(`  API:          ${apiUrl}`);
  // URLs someone set may hold passwords: shown redacted, and then not as a line to copy.
  const shown = [redisUrl, databaseUrl].map(redactSecrets);
  say(`  REDIS_URL:    ${shown[0] ?? ''}`);
  say(`  DATABASE_URL: ${shown[1] ?? ''}`);
  say(
    shown[0] === redisUrl && shown[1] === databaseUrl
      ? `  for the CLI: export REDIS_URL=${redisUrl} DATABASE_URL=${databaseUrl}`
      : '  for the CLI: export the REDIS_URL and DATABASE_URL you set',
  );
  const { durability } = tally;
  if (!durability.durable || durability.maxmemoryPolicy !== 'noeviction') {
    say(
      `  note: tally serve and tally worker would refuse this Redis (${durability.lossBound}) ` +
        'unless TALLY_ACCEPT_REDIS_LOSS allows it',
    );
  }
  say(
    `  try: curl -X POST ${apiUrl}/v1/counters/hello/increment && curl ${apiUrl}/v1/counters/hello`,
  );
}

/** `--load`: `rate` increments a second over five labelled counters. */
function startDemoLoad(tally: Tally, rate: number, say: (line: string) => void, logger: Logger) {
  let sent = 0;
  if (rate <= 0) return { sent: () => sent, stop: () => undefined };
  say(
    `  demo load: ${rate} increments/s to demo_requests{tenant="t0"} … ` +
      'demo_requests{tenant="t4"}',
  );
  const timer = setInterval(() => {
    for (let i = 0; i < rate / 10; i++) {
      tally.incr({ name: 'demo_requests', labels: { tenant: `t${i % 5}` } }).then(
        () => sent++,
        (error: unknown) => {
          logger.warn({ err: error }, 'demo increment failed');
        },
      );
    }
  }, 100);
  return {
    sent: () => sent,
    stop: () => {
      clearInterval(timer);
    },
  };
}

/** The live line: increments per second (API and demo load), pending deltas, flush lag. */
function startStatusLine(
  apiUrl: string,
  tally: Tally,
  demoSent: () => number,
  say: (line: string) => void,
): () => void {
  const show = (line: string) => {
    if (process.stdout.isTTY) process.stdout.write(`\r${line.padEnd(70)}`);
    else say(line);
  };
  let lastCount = 0;
  const timer = setInterval(() => {
    void (async () => {
      const metrics = await (await fetch(`${apiUrl}/metrics`)).text();
      const viaApi = [...metrics.matchAll(/^tally_increments_total\{[^}]*\} (\d+)/gm)].reduce(
        (sum, match) => sum + Number(match[1]),
        0,
      );
      const count = viaApi + demoSent();
      const status = await tally.status();
      const pending = status.shards.reduce((sum, s) => sum + s.pendingDeltas, 0);
      const lagMs = Math.max(...status.shards.map((s) => s.oldestUnflushedAgeMs));
      show(
        `${count - lastCount} increments/s | ${pending} deltas pending | flush lag ` +
          `${(lagMs / 1000).toFixed(1)} s`,
      );
      lastCount = count;
    })().catch((error: unknown) => {
      // A line, not a stack every second: the servers' own errors say the rest.
      // status() reads PostgreSQL leniently: what fails it is Redis.
      show(error instanceof TallyError ? unreachableServer(error) : 'Redis unreachable');
    });
  }, 1_000);
  return () => {
    clearInterval(timer);
  };
}

/**
 * `tally dev`: the whole stack in one process tree — Redis and PostgreSQL (private ones when
 * REDIS_URL / DATABASE_URL are unset), migrations, the HTTP API and one flush worker — with a
 * live status line. Ctrl-C stops it all after a last flush.
 */
export async function runDev(options: DevOptions): Promise<void> {
  const logger = createLogger({
    level: parseLogLevel(process.env.TALLY_LOG_LEVEL, 'warn'),
    format: parseLogFormat(process.env.TALLY_LOG_FORMAT),
    fd: 2,
  });
  const say = (line: string) => process.stdout.write(`${line}\n`);
  const releaseDataDir = await claimDataDir(options.dataDir);
  const { redisUrl, databaseUrl, started } = await storeServers(options, say);
  await migrate(databaseUrl);

  const buckets = parseBuckets(process.env.TALLY_BUCKETS);
  // Any Redis will do for trying Tally out; the banner says what serve and worker would make
  // of it.
  const redisLossAccepted = 'any';
  const tally = await createTally({
    redis: redisUrl,
    postgres: databaseUrl,
    shards,
    keyPrefix,
    buckets,
    redisLossAccepted,
    logger,
  });
  const api = await buildApi({ tally, tokens: [], logger });
  await api.listen({ port: options.port, host: '127.0.0.1' });
  const address = api.server.address();
  const apiUrl = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : options.port}`;
  const worker = await startFlushWorker(
    {
      // The worker's own defaults for everything dev does not choose.
      ...workerConfigFromEnv({ REDIS_URL: redisUrl, DATABASE_URL: databaseUrl }),
      shards,
      keyPrefix,
      buckets,
      redisLossAccepted,
      logLevel: 'warn',
      flushIntervalMs,
      metricsPort: undefined,
    },
    logger,
  );

  printBanner(say, { dataDir: options.dataDir, apiUrl, redisUrl, databaseUrl, tally });
  const demo = startDemoLoad(tally, options.load, say, logger);
  const stopStatusLine = startStatusLine(apiUrl, tally, demo.sent, say);

  exitOnSignals(
    async () => {
      stopStatusLine();
      demo.stop();
      say('\nstopping: finishing requests and flushes, then the servers');
      await closeInOrder([
        ['the API', () => api.close()],
        ['the worker', () => worker.close()],
        ['the last flush', () => tally.flush()], // nothing left in Redis only
        ['the engine', () => tally.close()],
        ...started
          .reverse()
          .map((server) => [`the server at ${server.url}`, () => server.stop()] as const),
        ['the data folder', releaseDataDir],
      ]);
      say('stopped');
    },
    { logger, timeoutMs: 60_000 },
  );
}
