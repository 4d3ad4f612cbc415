import {
  durabilityCheckIntervalDefaultMs,
  flushLockTtlDefaultMs,
  ledgerRetentionDefaultMs,
  ledgerRetentionMinMs,
  replicaWaitTimeoutDefaultMs,
  storeDefaults,
} from '../config.js';
import { serviceDefaults } from '../process/env-config.js';

/**
 * The environment variables `tally serve` and `tally worker` read, for their `--help` (a test
 * checks that every variable their configuration reads is listed here).
 */
type Variables = readonly (readonly [name: string, meaning: string])[];

const store: Variables = [
  [
    'REDIS_URL',
    'Redis: redis://, redis+cluster://h1:p1,h2:p2 or redis+sentinel://s1:p1,s2:p2/name; rediss… for TLS (required)',
  ],
  ['DATABASE_URL', 'PostgreSQL URL, postgres:// (required)'],
  ['TALLY_SHARDS', `shard count of the store (default ${storeDefaults.shards})`],
  ['TALLY_KEY_PREFIX', `Redis key prefix of the store (default ${storeDefaults.keyPrefix})`],
  [
    'TALLY_BUCKETS',
    `usage granularities kept: minute,hour,day,month or none (default ${storeDefaults.buckets.join(',')})`,
  ],
  [
    'TALLY_RETENTION',
    'how long buckets are kept, e.g. minute=7d,hour=90d,day=3y,month=forever (the defaults)',
  ],
  [
    'TALLY_ACCEPT_REDIS_LOSS',
    'none | bounded | any: which Redis settings to accept (default none)',
  ],
  [
    'TALLY_DURABILITY_CHECK_INTERVAL_MS',
    `how often Redis settings are read again (default ${durabilityCheckIntervalDefaultMs})`,
  ],
  [
    'TALLY_MIN_REPLICAS',
    'replicas that must hold an increment before it is acknowledged, by WAIT (default 0)',
  ],
  [
    'TALLY_REPLICA_WAIT_TIMEOUT_MS',
    `how long an increment waits for them; fewer: OUTCOME_UNKNOWN (default ${replicaWaitTimeoutDefaultMs})`,
  ],
  ['TALLY_LOG_LEVEL', 'fatal, error, warn, info, debug, trace or silent (default info)'],
  ['TALLY_LOG_FORMAT', 'json or pretty (default: pretty on a terminal, json otherwise)'],
];

const shutdown: Variables = [
  [
    'TALLY_SHUTDOWN_TIMEOUT_MS',
    `longest graceful shutdown before exiting 1 (default ${serviceDefaults.shutdownTimeoutMs})`,
  ],
];

export const serveVariables: Variables = [
  ...store,
  ['PORT', 'port to listen on, 0 for any free one (default 8080)'],
  ['HOST', 'address to listen on (default 127.0.0.1)'],
  ['TALLY_API_TOKEN', 'bearer tokens, comma-separated, 16+ characters each; unset: no auth'],
  ['TALLY_ALLOW_UNAUTHENTICATED', 'yes: serve a non-loopback HOST without TALLY_API_TOKEN'],
  ['TALLY_BODY_LIMIT_BYTES', 'largest request body (default 1048576)'],
  ['TALLY_MAX_BATCH', 'most increments or counters per request (default 1000)'],
  ['TALLY_IDEMPOTENCY_WINDOW_MS', 'how long an idempotency key is remembered (default 86400000)'],
  ['TALLY_REQUEST_TIMEOUT_MS', 'longest time to receive a whole request (default 10000)'],
  ['TALLY_KEEP_ALIVE_TIMEOUT_MS', 'idle keep-alive connections are closed after (default 5000)'],
  [
    'TALLY_MAX_CONCURRENT_QUERIES',
    'usage queries and exports at once; more answer 503 (default 4)',
  ],
  [
    'TALLY_QUERY_TIMEOUT_MS',
    'a usage query fails after PostgreSQL is silent, an export is cut after its client is, this long (default 30000)',
  ],
  ['TALLY_REDIS_TIMEOUT_MS', 'a Redis reply later than this fails the call (default 2000)'],
  ['TALLY_INCREMENT_TIMEOUT_MS', 'longest increment, with its retries (default 5000)'],
  ['TALLY_MAX_BACKDATE_MS', "how far before now an increment's at may lie (default 35 days)"],
  ['TALLY_MAX_FUTURE_MS', "how far after now an increment's at may lie (default 300000)"],
  ...shutdown,
];

export const workerVariables: Variables = [
  ...store,
  [
    'TALLY_FLUSH_INTERVAL_MS',
    `how often each shard is flushed (default ${serviceDefaults.flushIntervalMs})`,
  ],
  [
    'TALLY_WORKER_CONCURRENCY',
    `flush jobs one replica runs at once (default ${serviceDefaults.workerConcurrency})`,
  ],
  ['TALLY_METRICS_PORT', 'port of /metrics and /healthz (default: none)'],
  ['TALLY_METRICS_HOST', 'address of /metrics and /healthz (default 127.0.0.1)'],
  [
    'TALLY_JOB_LOCK_MS',
    `BullMQ job lock; a silent replica loses its job after it (default ${serviceDefaults.jobLockMs})`,
  ],
  ['TALLY_FLUSH_LOCK_TTL_MS', `the engine's shard lock TTL (default ${flushLockTtlDefaultMs})`],
  [
    'TALLY_LEDGER_RETENTION_MS',
    `flush ledger rows are kept this long (default ${ledgerRetentionDefaultMs}, 7 days; at least ${ledgerRetentionMinMs})`,
  ],
  [
    'TALLY_LEDGER_PRUNE_INTERVAL_MS',
    `how often the ledger is pruned (default ${serviceDefaults.ledgerPruneIntervalMs})`,
  ],
  [
    'TALLY_BUCKET_UPKEEP_INTERVAL_MS',
    `how often bucket partitions are created ahead and pruned (default ${serviceDefaults.bucketUpkeepIntervalMs})`,
  ],
  ...shutdown,
];

/** The `Environment:` section of a command's help. */
export function environmentHelp(variables: Variables): string {
  const width = Math.max(...variables.map(([name]) => name.length)) + 2;
  return `\nEnvironment:\n${variables.map(([name, meaning]) => `  ${name.padEnd(width)}${meaning}`).join('\n')}`;
}
