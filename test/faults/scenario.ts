/**
 * One fault-injection run: load with idempotency keys over HTTP and the library, a seeded
 * schedule of faults, then heal, drain and check the history.
 */
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { shardOf } from '../../src/counters/sharding.js';
import { createTally, TallyError, type Tally } from '../../src/index.js';
import { runTypeScript } from '../support/child-process.js';
import { postgresTotals } from '../support/tally-store.js';
import { waitFor } from '../support/wait-for.js';
import { checkReads, checkTotals, History, seededRandom } from './history.js';
import { FaultySystem, idempotencyWindowMs, jobLockMs, shards } from './system.js';

const cli = new URL('../../src/cli/main.ts', import.meta.url);

export interface ScenarioOptions {
  seed: number;
  durationMs: number;
  faultEveryMs: number;
  persistence: 'aof-always' | 'none';
  /** HTTP clients (one library client runs besides them). */
  clients: number;
  /** Keep injecting past `durationMs` until this many faults have struck. */
  minFaults?: number;
  /** Increments per HTTP request (1: the one-counter route; more: POST /v1/increments). */
  batchSize?: number;
  /** For the no-persistence scenario: wipe Redis once, half-way. */
  wipeMidRun?: boolean;
  /** A Redis Cluster (3 + 3) and failovers instead of one Redis and its faults. */
  topology?: 'single' | 'cluster';
  /** TALLY_MIN_REPLICAS (cluster runs): 0 lets a failover lose, and only report, increments. */
  minReplicas?: number;
  workerEnv?: Record<string, string>;
  log?: (line: string) => void;
}

export interface ScenarioResult {
  seed: number;
  operations: { ok: number; fail: number; info: number; attempts: number };
  /** How long the load and the faults ran. */
  loadSeconds: number;
  /** Distinct increments invoked per second of load. */
  invokedPerSecond: number;
  /** Attempts (first tries and retries with the same key) per second of load: the offered load. */
  offeredPerSecond: number;
  reads: number;
  faults: Record<string, number>;
  lost: number;
  duplicated: number;
  /** With a wipe: the most that may be lost (ok increments not yet flushed at the wipe). */
  lossBound: number | undefined;
  redisLostDataReported: boolean | undefined;
  /** Cluster runs: the rewinds `tally reconcile` reported (calls lost, summed). */
  rewoundCalls: number | undefined;
  worstReadViolation: string | undefined;
  /** Everything that went wrong; empty when the run passes. */
  violations: string[];
  historyFile: string | undefined;
}

const counters = Array.from({ length: 8 }, (_, i) => `faulty-${i}`);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function runScenario(options: ScenarioOptions): Promise<ScenarioResult> {
  const log = options.log ?? (() => undefined);
  const random = seededRandom(options.seed);
  const cluster = options.topology === 'cluster';
  const system = await FaultySystem.start({
    persistence: options.persistence,
    ...(cluster ? { topology: 'cluster', minReplicas: options.minReplicas ?? 0 } : {}),
    ...(options.workerEnv === undefined ? {} : { workerEnv: options.workerEnv }),
  });
  const history = new History();
  const faults: Record<string, number> = {};
  const violations: string[] = [];
  let lossBound: number | undefined;
  let redisLostDataReported: boolean | undefined;
  const library: Tally = await createTally({
    redis: system.env.REDIS_URL ?? '',
    postgres: system.proxiedDatabaseUrl,
    shards,
    keyPrefix: system.keyPrefix,
    redisCommandTimeoutMs: 1_000,
    idempotencyWindowMs,
    // As the services are configured (system.env's TALLY_MIN_REPLICAS).
    minReplicas: Number(system.env.TALLY_MIN_REPLICAS ?? 0),
  });
  let loadRunning = true;
  /** Set when the clients had their time to settle: what is still unknown stays unknown. */
  let abandoned = false;

  /** Retries increments (ids in the history) with their keys until their outcome is known. */
  async function settle(ops: number[], attempt: () => Promise<'ok' | 'fail' | 'unknown'>) {
    while (!abandoned) {
      for (const op of ops) history.attempt(op);
      const outcome = await attempt().catch(() => 'unknown' as const);
      if (outcome !== 'unknown') {
        for (const op of ops) history.complete(op, outcome);
        return;
      }
      await sleep(50);
    }
  }

  /** One of the APIs that are up now (they move: a restarted API listens on a new port). */
  async function someApi(random: () => number): Promise<string | undefined> {
    const urls = await system.apiUrls();
    return urls[Math.floor(random() * urls.length)];
  }

  async function httpClient(name: string, index: number) {
    const clientRandom = seededRandom(options.seed * 31 + index);
    const batchSize = options.batchSize ?? 1;
    for (let i = 0; loadRunning; i++) {
      const counter = counters[Math.floor(clientRandom() * counters.length)] ?? 'faulty-0';
      if (i % 10 === 9) {
        const base = await someApi(clientRandom);
        const invokedAt = history.now();
        const response = await fetch(`${base}/v1/counters/${counter}`, {
          signal: AbortSignal.timeout(2_000),
        }).catch(() => undefined);
        if (response?.status === 200) {
          history.read(counter, invokedAt, ((await response.json()) as { value: number }).value);
        }
        continue;
      }
      const ops = Array.from({ length: batchSize }, () =>
        history.invoke(
          name,
          counters[Math.floor(clientRandom() * counters.length)] ?? 'faulty-0',
          1 + Math.floor(clientRandom() * 3),
        ),
      );
      await settle(ops, async () => {
        const base = await someApi(clientRandom);
        if (base === undefined) return 'unknown';
        const [only] = ops;
        // One increment: the one-counter route; several: a batch, retried whole (items that
        // had been counted come back as duplicates).
        const response =
          ops.length === 1 && only !== undefined
            ? await fetch(`${base}/v1/counters/${history.counterOf(only)}/increment`, {
                method: 'POST',
                headers: { 'content-type': 'application/json' },
                body: JSON.stringify({
                  by: history.byOf(only),
                  idempotencyKey: history.keyOf(only),
                }),
                signal: AbortSignal.timeout(3_000),
              })
            : await fetch(`${base}/v1/increments`, {
                method: 'POST',
                headers: { 'content-type': 'application/json' },
                body: JSON.stringify({
                  increments: ops.map((op) => ({
                    counter: history.counterOf(op),
                    by: history.byOf(op),
                    idempotencyKey: history.keyOf(op),
                  })),
                }),
                signal: AbortSignal.timeout(3_000),
              });
        if (response.status === 200) return 'ok';
        if (response.status >= 400 && response.status < 500) return 'fail';
        return 'unknown';
      });
    }
  }

  async function libraryClient() {
    const clientRandom = seededRandom(options.seed ^ 0x5bd1e995);
    while (loadRunning) {
      const counter = counters[Math.floor(clientRandom() * counters.length)] ?? 'faulty-0';
      const by = 1 + Math.floor(clientRandom() * 3);
      const op = history.invoke('library', counter, by);
      await settle([op], async () => {
        try {
          await library.incr(counter, by, { idempotencyKey: history.keyOf(op) });
          return 'ok';
        } catch (error) {
          return error instanceof TallyError && error.code === 'VALIDATION' ? 'fail' : 'unknown';
        }
      });
    }
  }

  const load = [
    ...Array.from({ length: options.clients }, (_, i) => httpClient(`http${i}`, i)),
    libraryClient(),
  ];

  // Failovers weigh most in a cluster run: its point (the issue asks for hundreds of them).
  const kinds = cluster
    ? [
        'kill-api',
        'kill-worker',
        'pause-worker',
        'stop-postgres',
        'reset-postgres',
        'failover-primary',
        'failover-primary',
        'failover-primary',
        'failover-primary',
        'pause-primary',
        'pause-primary',
        'kill-replica',
      ]
    : options.persistence === 'aof-always'
      ? [
          'kill-api',
          'kill-worker',
          'pause-worker',
          'crash-redis',
          'shutdown-redis',
          'stop-postgres',
          'reset-redis',
          'reset-postgres',
          'stall-redis',
        ]
      : ['kill-api', 'kill-worker', 'pause-worker', 'stop-postgres'];
  const started = Date.now();
  let wiped = false;
  const struck = () => Object.values(faults).reduce((a, b) => a + b, 0);
  while (Date.now() - started < options.durationMs || struck() < (options.minFaults ?? 0)) {
    await sleep(options.faultEveryMs);
    if (options.wipeMidRun === true && !wiped && Date.now() - started > options.durationMs / 2) {
      wiped = true;
      await sleep(3_000); // no other fault near the wipe: unknown outcomes would cross it
      const flushed = [...(await postgresTotals(system.databaseUrl)).values()].reduce(
        (a, b) => a + b,
        0,
      );
      await system.redis.wipe();
      const okBefore = [...history.sums('ok').values()].reduce((a, b) => a + b, 0);
      lossBound = okBefore - flushed;
      faults.wipe = 1;
      log(`fault: wipe redis (at most ${lossBound} may be lost)`);
      const check = await runTypeScript(cli, ['reconcile', '--json'], system.directEnv);
      redisLostDataReported =
        (JSON.parse(check.stdout) as { redisLostData: number[] }).redisLostData.length > 0;
      await sleep(3_000);
      continue;
    }
    const kind = kinds[Math.floor(random() * kinds.length)] ?? 'kill-api';
    const which = Math.floor(random() * 2);
    faults[kind] = (faults[kind] ?? 0) + 1;
    log(`fault: ${kind}${kind.includes('api') || kind.includes('worker') ? ` #${which}` : ''}`);
    switch (kind) {
      case 'kill-api':
        await system.killApi(which);
        break;
      case 'kill-worker':
        await system.killWorker(which);
        break;
      case 'pause-worker':
        await system.pauseWorker(which, jobLockMs * 2.5);
        break;
      case 'crash-redis':
        await system.crashRedis();
        break;
      case 'shutdown-redis':
        await system.shutdownRedis();
        break;
      case 'stop-postgres':
        await system.stopPostgres(1_500);
        break;
      case 'reset-redis':
        system.redisProxy.resetAll();
        break;
      case 'reset-postgres':
        system.postgresProxy.resetAll();
        break;
      case 'stall-redis':
        system.redisProxy.stall(1_500);
        break;
      case 'failover-primary':
        await system.failoverPrimary(which);
        break;
      case 'kill-replica':
        await system.killReplica(which);
        break;
      case 'pause-primary':
        await system.pausePrimary(which);
        break;
    }
  }

  // Heal and drain: every fault is over; let the clients settle what they started.
  loadRunning = false;
  const loadSeconds = Math.round((Date.now() - started) / 1000);
  /** Distinct increments invoked while the faults struck (retries not counted again). */
  const invoked = history.length;
  const attempts = history.attempts();
  await Promise.race([Promise.all(load), sleep(90_000)]);
  abandoned = true;
  await library.close();
  const flush = await waitFor(
    'tally flush to drain the store',
    async () => {
      const result = await runTypeScript(cli, ['flush'], system.directEnv);
      return result.code === 0 ? result : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 500 },
  );
  log(flush.stdout.trim().split('\n').at(-1) ?? '');

  const totals = await postgresTotals(system.databaseUrl);
  const verdict = checkTotals(history, totals);
  const lost = [...verdict.lost.values()].reduce((a, b) => a + b, 0);
  const duplicated = [...verdict.duplicated.values()].reduce((a, b) => a + b, 0);
  if (verdict.unknown > 0)
    violations.push(`${verdict.unknown} increments never got a known outcome`);
  if (duplicated > 0)
    violations.push(`duplicated ${duplicated}: ${JSON.stringify([...verdict.duplicated])}`);
  // A cluster without minReplicas may lose what a failover's primary acknowledged last, but
  // never silently: reconcile must report a shard that went back in time.
  let rewoundCalls: number | undefined;
  const rewoundShards = new Set<number>();
  if (cluster) {
    const check = await runTypeScript(cli, ['reconcile', '--json'], system.directEnv);
    const report = JSON.parse(check.stdout) as {
      rewinds: { shard: number; callsLost: number }[];
    };
    rewoundCalls = report.rewinds.reduce((sum, rewind) => sum + rewind.callsLost, 0);
    for (const rewind of report.rewinds) rewoundShards.add(rewind.shard);
  }
  const lossesAllowed = cluster && (options.minReplicas ?? 0) === 0;
  // Every loss is reported on its own shard: a counter short of its acknowledged sum whose
  // shard no process saw go back in time was lost silently.
  const silentlyLost = [...verdict.lost].filter(
    ([counter]) => !rewoundShards.has(shardOf(counter, shards)),
  );
  if (lossesAllowed && silentlyLost.length > 0)
    violations.push(`lost on shards with no rewind reported: ${JSON.stringify(silentlyLost)}`);
  if (lossBound === undefined && lost > 0 && !lossesAllowed)
    violations.push(`lost ${lost}: ${JSON.stringify([...verdict.lost])}`);
  if (lossBound !== undefined && lost > lossBound)
    violations.push(`lost ${lost}, more than the ${lossBound} unflushed at the wipe`);
  if (redisLostDataReported === false)
    violations.push('reconcile did not report the Redis data loss');

  // A shard that went back in time holds totals below PostgreSQL's: what an operator does then.
  if (lossesAllowed && (rewoundCalls ?? 0) > 0) {
    const repaired = await runTypeScript(cli, ['reconcile', '--repair'], system.directEnv);
    log(`reconcile --repair after the rewinds: exit ${repaired.code}`);
  }

  // Redis agrees, nothing is left in flight, and the day buckets add up to the totals.
  const direct = await createTally({
    redis: system.directEnv.REDIS_URL ?? '',
    postgres: system.databaseUrl,
    shards,
    keyPrefix: system.keyPrefix,
    rebuildAtStart: false,
  });
  const client = new pg.Client({ connectionString: system.databaseUrl });
  await client.connect();
  try {
    const redisTotals = await direct.getMany(counters);
    counters.forEach((counter, i) => {
      if (redisTotals[i] !== (totals.get(counter) ?? 0))
        violations.push(
          `Redis holds ${redisTotals[i]} for ${counter}, PostgreSQL ${totals.get(counter) ?? 0}`,
        );
    });
    const status = await direct.status();
    if (status.shards.some((s) => s.inflightBatch !== null || s.pendingDeltas > 0))
      violations.push('a batch is left in flight after the drain');
    const { rows } = await client.query<{ name: string; value: string }>(
      `SELECT name, sum(value)::text AS value FROM tally.counter_buckets WHERE granularity = 'day' GROUP BY name`,
    );
    for (const row of rows) {
      if (Number(row.value) !== (totals.get(row.name) ?? 0))
        violations.push(
          `day buckets of ${row.name} add up to ${row.value}, not ${totals.get(row.name)}`,
        );
    }
  } finally {
    await direct.close();
    await client.end();
  }

  // Redis wiped, rebuilt by reconcile --repair: the totals come back the same (one Redis).
  if (!cluster) await wipeAndRepair();
  async function wipeAndRepair() {
    await system.redis.wipe();
    const repair = await runTypeScript(cli, ['reconcile', '--repair'], system.directEnv);
    if (repair.code !== 0)
      violations.push(`reconcile --repair exited ${repair.code}: ${repair.stderr}`);
    const rebuilt = await createTally({
      redis: system.redis.url,
      postgres: system.databaseUrl,
      shards,
      keyPrefix: system.keyPrefix,
      rebuildAtStart: false,
    });
    try {
      const values = await rebuilt.getMany(counters);
      counters.forEach((counter, i) => {
        if (values[i] !== (totals.get(counter) ?? 0))
          violations.push(
            `after a wipe and repair, ${counter} is ${values[i]}, not ${totals.get(counter) ?? 0}`,
          );
      });
    } finally {
      await rebuilt.close();
    }
  }

  // Reads after a loss may lie below what was acknowledged: not checked then.
  const readViolations =
    options.wipeMidRun === true || (lossesAllowed && lost > 0) ? [] : checkReads(history);
  const worst = readViolations[0];
  if (worst !== undefined) {
    const { read, lowerBound, upperBound } = worst;
    violations.push(
      `${readViolations.length} reads out of bounds; the worst: ${read.counter} read as ` +
        `${read.value} between ${read.invokedAt} and ${read.completedAt} (ms since 1970), ` +
        `bounds [${lowerBound}, ${upperBound}]`,
    );
  }

  let historyFile: string | undefined;
  if (violations.length > 0) {
    const offending = new Set([
      ...verdict.lost.keys(),
      ...verdict.duplicated.keys(),
      ...(worst === undefined ? [] : [worst.read.counter]),
    ]);
    // Scenarios of one test run share the seed: the name tells them apart.
    const scenario = `${options.persistence}${options.wipeMidRun === true ? '-wiped' : ''}${cluster ? '-cluster' : ''}`;
    historyFile = join(tmpdir(), `tally-faults-${options.seed}-${scenario}-${process.pid}.json`);
    await writeFile(
      historyFile,
      JSON.stringify(
        {
          seed: options.seed,
          violations,
          increments: history.idsOf(offending).map((id) => history.op(id)),
          reads: history.reads.filter((r) => offending.has(r.counter)),
        },
        null,
        1,
      ),
    );
  }
  await system.stop();

  return {
    seed: options.seed,
    operations: {
      ok: history.count('ok'),
      fail: history.count('fail'),
      info: history.count('info'),
      attempts: history.attempts(),
    },
    loadSeconds,
    invokedPerSecond: Math.round(invoked / loadSeconds),
    offeredPerSecond: Math.round(attempts / loadSeconds),
    reads: history.reads.length,
    faults,
    lost,
    duplicated,
    lossBound,
    redisLostDataReported,
    rewoundCalls,
    worstReadViolation:
      worst === undefined
        ? undefined
        : `${worst.read.counter} read ${worst.read.value}, bounds [${worst.lowerBound}, ${worst.upperBound}]`,
    violations,
    historyFile,
  };
}
