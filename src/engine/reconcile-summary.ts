import type { Tally } from '../tally.js';
import { explainReconcile } from './reconcile-diagnosis.js';
import type { ShardReconcileReport } from './reconciler.js';

export type ReconcileSummary = ReturnType<typeof summariseReconcile>;

/**
 * What a reconcile found across its shards, as `tally reconcile --json` prints it and
 * `POST /v1/reconcile:check` answers it: one shape for people, scripts and the console.
 */
export function summariseReconcile(
  tally: Tally,
  reports: ShardReconcileReport[],
  repair: boolean,
  durationMs: number,
) {
  const drift = reports.flatMap((report) => report.drift);
  const redisLostData = reports.filter((r) => r.redisLostData).map((r) => r.shard);
  return {
    mode: repair ? 'repair' : 'check',
    shards: reports.length,
    countersChecked: reports.reduce((sum, r) => sum + r.countersChecked, 0),
    drift,
    // Redis ahead of PostgreSQL + deltas: increments PostgreSQL lacks (explanations say why).
    redisAheadBy: drift.reduce(
      (sum, d) => sum + Math.max(0, (d.redisValue ?? 0) - d.expectedValue),
      0,
    ),
    repaired: reports.some((r) => r.repaired),
    redisLostData,
    // When running processes found a shard's Redis data gone and rebuilt it themselves.
    lossesFoundAt: reports.flatMap((r) => r.lossesFoundAt.map((at) => ({ shard: r.shard, at }))),
    // When running processes found a shard gone back in time (a failover, an AOF restart).
    rewinds: reports.flatMap((r) => r.rewinds.map((rewind) => ({ shard: r.shard, ...rewind }))),
    // Batches the flushes refuse (older than the pruned ledger): `tally resolve-batch`.
    refusedBatches: reports.flatMap((r) =>
      r.refusedBatch === null ? [] : [{ shard: r.shard, batchId: r.refusedBatch }],
    ),
    explanations: explainReconcile({
      drift,
      redisLostData,
      durability: tally.durability,
    }),
    durationMs,
  };
}
