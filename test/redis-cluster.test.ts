import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { migrate, TallyError, type Tally } from '../src/index.js';
import { shardOf } from '../src/counters/sharding.js';
import { shardKeys } from '../src/redis/shard-keys.js';
import { runTypeScript } from './support/child-process.js';
import { createDatabase, waitFor } from './support/index.js';
import { startRedisCluster, type RedisClusterHandle } from './support/redis-cluster.js';
import { FailoverLoad, failoverTimeouts } from './support/failover-load.js';
import { startWorker } from './support/tally-process.js';
import { postgresTotals, tallyOn } from './support/tally-store.js';

const cli = new URL('../src/cli/main.ts', import.meta.url);

let cluster: RedisClusterHandle;
beforeAll(async () => {
  // Behind proxies, so that a test can lose a reply.
  cluster = await startRedisCluster({ proxied: true });
}, 60_000);
afterAll(async () => {
  await cluster.stop();
});

async function fresh(options: Parameters<typeof tallyOn>[2] = {}) {
  const url = await createDatabase();
  const keyPrefix = `k${randomBytes(4).toString('hex')}`;
  const tally = await tallyOn(cluster.url, url, {
    shards: 8,
    keyPrefix,
    // The harness' nodes keep no AOF: what a crash of one loses is what these tests are about.
    redisLossAccepted: 'bounded',
    ...options,
  });
  const pool = new pg.Pool({ connectionString: url });
  onTestFinished(async () => {
    await tally.close();
    await pool.end();
  });
  return { tally, pool, url, keyPrefix };
}

/** The primaries that serve the shards' slots (8 shards land on all three of them). */
async function shardPrimaries(keyPrefix: string, shards: number): Promise<Set<number>> {
  const ports = new Set<number>();
  for (let shard = 0; shard < shards; shard++) {
    ports.add((await cluster.primaryOf(shardKeys(keyPrefix, shard).totals)).port);
  }
  return ports;
}

describe('on a Redis Cluster of 3 primaries and 3 replicas', () => {
  it('increments (group commit), reads, usage, flush, reconcile and status work on every shard', async () => {
    const { tally, url, keyPrefix } = await fresh();
    expect((await shardPrimaries(keyPrefix, 8)).size).toBe(3);
    const names = Array.from({ length: 40 }, (_, i) => `c${i}`);
    const at = new Date('2026-03-01T10:00:00Z');
    // One turn: every shard's increments go as one call per shard, to three nodes.
    await Promise.all(
      names.flatMap((name, i) => Array.from({ length: 5 }, () => tally.incr(name, i + 1, { at }))),
    );
    const expected = names.map((_, i) => 5 * (i + 1));
    expect(await tally.getMany(names)).toEqual(expected);
    const usage = { granularity: 'hour', from: at, to: new Date('2026-03-01T11:00:00Z') } as const;
    expect(await tally.usage('c3', usage)).toEqual([{ start: at, value: 20 }]);

    expect((await tally.flush()).length).toBe(8);
    const totals = await postgresTotals(url);
    expect(names.map((name) => totals.get(name))).toEqual(expected);
    // After the flush the same reads come from PostgreSQL's part and Redis' totals.
    expect(await tally.usage('c3', usage)).toEqual([{ start: at, value: 20 }]);
    expect(await tally.getMany(names)).toEqual(expected);
    const page = await tally.query({
      prefix: 'c',
      granularity: 'day',
      from: at,
      to: new Date('2026-03-02'),
    });
    expect(page.rows.reduce((sum, row) => sum + row.value, 0)).toBe(
      expected.reduce((a, b) => a + b),
    );

    const reports = await tally.reconcile();
    expect(reports.map((report) => report.drift)).toEqual(Array.from({ length: 8 }, () => []));
    const status = await tally.status();
    // Durability is read from every primary and replica, and judged by the weakest.
    expect(status.redis).toMatchObject({ servers: 6, appendonly: false });
    expect(status.shards.every((shard) => shard.pendingDeltas === 0)).toBe(true);
  });

  it('a lost reply is OUTCOME_UNKNOWN, and the cluster client never re-sends the increment: counted once', async () => {
    const { tally, keyPrefix } = await fresh();
    const counter = 'lost-reply-counter';
    await tally.incr(counter);
    const primary = await cluster.primaryOf(shardKeys(keyPrefix, shardOf(counter, 8)).totals);
    const proxy = cluster.proxies.get(primary.port);
    proxy?.loseReplyTo(counter);
    const error: unknown = await tally.incr(counter).catch((caught: unknown) => caught);
    expect(error).toMatchObject({ code: 'OUTCOME_UNKNOWN' });
    expect(proxy?.repliesLost).toBe(1);
    // Applied once: Redis has it, and nothing sent it again. (The connection is re-made.)
    expect(await waitFor('a read', () => tally.get(counter).catch(() => undefined))).toBe(2);
  });

  it('minReplicas: acknowledged once a replica holds it; asked for more than exist, OUTCOME_UNKNOWN though the primary applied it', async () => {
    const { tally } = await fresh({ minReplicas: 1 });
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) => tally.incr(`m${i % 8}`)),
    );
    expect(results.every((result) => result.status === 'applied')).toBe(true);
    expect(await tally.getMany(['m0', 'm7'])).toEqual([7, 6]);
    // Scripts flushed from every node (a restart, SCRIPT FLUSH): NOSCRIPT in the pipeline, the
    // script loaded there and the call sent again, covered by a WAIT, counted once.
    for (const node of cluster.nodes) await cluster.command(node, 'SCRIPT', 'FLUSH');
    expect((await tally.incr('m0')).value).toBe(8);
    for (const node of cluster.nodes) await cluster.command(node, 'SCRIPT', 'FLUSH');
    expect((await tally.flush()).length).toBeGreaterThan(0);
    expect(await tally.get('m0')).toBe(8);

    // The client gives up on a WAIT at the command timeout: a longer wait is refused.
    await expect(
      fresh({ minReplicas: 1, replicaWaitTimeoutMs: 2_000, redisCommandTimeoutMs: 2_000 }),
    ).rejects.toThrow(/replicaWaitTimeoutMs \(2000\) must be below redisCommandTimeoutMs/);
    const { tally: greedy } = await fresh({ minReplicas: 2, replicaWaitTimeoutMs: 200 });
    const error: unknown = await greedy.incr('g').catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(TallyError);
    expect(error).toMatchObject({ code: 'OUTCOME_UNKNOWN' });
    expect((error as Error).message).toMatch(/only 1 of the 2 replicas/);
    expect(await greedy.get('g')).toBe(1);
  });

  it('tally worker flushes on the cluster (BullMQ) and tally status / reconcile report on it', async () => {
    const databaseUrl = await createDatabase();
    await migrate(databaseUrl);
    const keyPrefix = `w${randomBytes(4).toString('hex')}`;
    const env = {
      REDIS_URL: cluster.url,
      DATABASE_URL: databaseUrl,
      TALLY_SHARDS: '8',
      TALLY_KEY_PREFIX: keyPrefix,
      TALLY_ACCEPT_REDIS_LOSS: 'bounded',
      TALLY_FLUSH_INTERVAL_MS: '200',
    };
    const worker = startWorker(env);
    onTestFinished(async () => {
      worker.kill('SIGKILL');
      await worker.exited;
    });
    await worker.metricsPort();
    const { tally } = await freshOn(databaseUrl, keyPrefix);
    await Promise.all(Array.from({ length: 64 }, (_, i) => tally.incr(`w${i % 16}`, 2)));
    await waitFor('the worker to flush every counter', async () => {
      const totals = await postgresTotals(databaseUrl);
      return totals.size === 16 && [...totals.values()].every((value) => value === 8)
        ? true
        : undefined;
    });
    const status = await runTypeScript(cli, ['status', '--json'], { ...process.env, ...env });
    expect(status.stderr).toBe('');
    expect(status.code).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({ redis: { servers: 6 } });
    const reconcile = await runTypeScript(cli, ['reconcile'], { ...process.env, ...env });
    expect(reconcile.code, reconcile.stderr).toBe(0);
  });
});

describe('failover under load', () => {
  it('kill -9 of a primary while clients count: its replica takes over, Tally follows, keyed retries are exact', async () => {
    const { tally, url, keyPrefix } = await fresh({ minReplicas: 1, ...failoverTimeouts });
    const load = new FailoverLoad(tally);
    await waitFor('load to be counted', () => (load.issued > 500 ? true : undefined));
    const victim = await cluster.primaryOf(shardKeys(keyPrefix, shardOf('plain', 8)).totals);
    const [replica] = await cluster.replicasOf(victim);
    await victim.kill('SIGKILL');
    // The replica is promoted once the others mark the primary failed (node timeout: 1 s).
    await cluster.waitHealthy({ replicated: false });
    expect((await cluster.primaryOf(shardKeys(keyPrefix, shardOf('plain', 8)).totals)).port).toBe(
      replica?.port,
    );
    const afterFailover = load.issued;
    // minReplicas 1: the promoted primary has no replica until the old one returns as one.
    await victim.restart();
    await cluster.waitHealthy();
    await waitFor('load to go on after the failover', () =>
      load.issued > afterFailover + 500 ? true : undefined,
    );
    await load.stopAndCheck(url);
    // The clients saw the failover, as typed errors only: in flight, OUTCOME_UNKNOWN.
    expect(load.failures.get('OUTCOME_UNKNOWN')).toBeGreaterThan(0);
    expect(
      [...load.failures.keys()].filter(
        (code) => !['OUTCOME_UNKNOWN', 'UNAVAILABLE'].includes(code),
      ),
    ).toEqual([]);
  });
});

describe('slot migration while counting', () => {
  it("moves a shard's slot to another primary (SETSLOT MIGRATING / IMPORTING, MIGRATE) under load: exact afterwards", async () => {
    const { tally, url, keyPrefix } = await fresh({ flushLockTtlMs: 3_000 });
    const load = new FailoverLoad(tally);
    await waitFor('load to be counted', () => (load.issued > 500 ? true : undefined));
    const shardKey = shardKeys(keyPrefix, shardOf('plain', 8)).totals;
    const source = await cluster.primaryOf(shardKey);
    const target = (await cluster.primaries()).find((node) => node !== source);
    if (target === undefined) throw new Error('no other primary');
    const [sourceId, targetId] = [await cluster.idOf(source), await cluster.idOf(target)];
    const slot = Number(await cluster.command(source, 'CLUSTER', 'KEYSLOT', shardKey));
    await cluster.command(target, 'CLUSTER', 'SETSLOT', slot, 'IMPORTING', sourceId);
    await cluster.command(source, 'CLUSTER', 'SETSLOT', slot, 'MIGRATING', targetId);
    // In a few MIGRATE calls, so that increments meet the slot half moved (TRYAGAIN, ASK).
    for (;;) {
      const keys = (await cluster.command(source, 'CLUSTER', 'GETKEYSINSLOT', slot, 3)) as string[];
      if (keys.length === 0) break;
      await cluster.command(
        source,
        'MIGRATE', '127.0.0.1', target.port, '', 0, 5_000, 'KEYS', ...keys,
      ); // prettier-ignore
    }
    for (const node of [target, source]) {
      await cluster.command(node, 'CLUSTER', 'SETSLOT', slot, 'NODE', targetId);
    }
    await waitFor('every node to see the slot moved', async () =>
      (await cluster.primaryOf(shardKey)) === target ? true : undefined,
    );
    const after = load.issued;
    await waitFor('load to go on', () => (load.issued > after + 500 ? true : undefined), {
      timeoutMs: 20_000,
    });
    await load.stopAndCheck(url);
  });
});

async function freshOn(databaseUrl: string, keyPrefix: string): Promise<{ tally: Tally }> {
  const tally = await tallyOn(cluster.url, databaseUrl, {
    shards: 8,
    keyPrefix,
    redisLossAccepted: 'bounded',
  });
  onTestFinished(async () => {
    await tally.close();
  });
  return { tally };
}
