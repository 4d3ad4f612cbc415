// Group commit on a Redis Cluster (3 primaries, a replica each, AOF always like the one Redis):
// against raw auto-pipelined HINCRBY on the same cluster, spread over the same hash tags;
// with minReplicas 1 against without; and against group commit on one Redis. Measured in
// turns, in one run.
import { Cluster } from 'ioredis';
import { createTally } from '../src/index.js';
import { startRedisCluster } from '../test/support/redis-cluster.js';
import { freshDatabase, type BenchContext } from './support/context.js';
import { mediansInTurns, throughput, zipf } from './support/measure.js';
import { ratioCheck, type BenchmarkResult } from './support/results.js';

export async function clusterIncrements(ctx: BenchContext): Promise<BenchmarkResult> {
  const counters = ctx.quick ? 10_000 : 100_000;
  const concurrency = 10_000;
  const shards = 16;
  const pick = zipf(counters);
  const cluster = await startRedisCluster({ persistence: 'aof-always' });
  // Generous timeouts for all: at 10k in flight on two cores a replica's acknowledgement took
  // over the 2 s command timeout, and the figure is throughput, not whether it fits a timeout.
  const timeouts = {
    redisCommandTimeoutMs: 20_000,
    replicaWaitTimeoutMs: 15_000,
    incrementTimeoutMs: 30_000,
  };
  const open = async (redis: string, keyPrefix: string, minReplicas = 0) =>
    createTally({
      redis,
      postgres: await freshDatabase(ctx),
      keyPrefix,
      shards,
      minReplicas,
      ...timeouts,
    });
  const onCluster = await open(cluster.url, 'cluster');
  const replicated = await open(cluster.url, 'replicated', 1);
  const single = await open(ctx.redis.url, 'single');
  const raw = new Cluster(
    cluster.nodes.map(({ host, port }) => ({ host, port })),
    { enableAutoPipelining: true },
  );
  try {
    // The raw baseline spreads its counters over as many hash tags as Tally has shards.
    const rawIncrement = () => {
      const counter = pick();
      return raw.hincrby(`raw:{${counter % shards}}`, `c${counter}`, 1);
    };
    const [groupCommit, rawHincrby, withReplica, oneRedis] = await mediansInTurns(3, [
      () => throughput(concurrency, ctx.seconds, () => onCluster.incr(`c${pick()}`)),
      () => throughput(concurrency, ctx.seconds, rawIncrement),
      () => throughput(concurrency, ctx.seconds, () => replicated.incr(`c${pick()}`)),
      () => throughput(concurrency, ctx.seconds, () => single.incr(`c${pick()}`)),
    ]);
    const figures = {
      'cluster: Tally group commit @10000': groupCommit ?? Number.NaN,
      'cluster: raw HINCRBY @10000': rawHincrby ?? Number.NaN,
      'cluster: Tally group commit, minReplicas 1 @10000': withReplica ?? Number.NaN,
      'one Redis: Tally group commit @10000': oneRedis ?? Number.NaN,
    };
    const benchmark = `incr on a 3-primary cluster, 10k in flight, Zipf over ${counters / 1000}k counters`;
    return {
      name: 'cluster',
      figures,
      checks: [
        ratioCheck(
          benchmark,
          figures['cluster: Tally group commit @10000'],
          figures['cluster: raw HINCRBY @10000'],
          'raw HINCRBY on the cluster',
          2,
        ),
        ratioCheck(
          `${benchmark}, minReplicas 1`,
          figures['cluster: Tally group commit, minReplicas 1 @10000'],
          figures['cluster: Tally group commit @10000'],
          'without minReplicas',
          0.5,
        ),
        ratioCheck(
          benchmark,
          figures['cluster: Tally group commit @10000'],
          figures['one Redis: Tally group commit @10000'],
          'one Redis (same machine, 2 cores)',
          0.5,
        ),
      ],
    };
  } finally {
    raw.disconnect();
    await onCluster.close();
    await replicated.close();
    await single.close();
    await cluster.stop();
  }
}
