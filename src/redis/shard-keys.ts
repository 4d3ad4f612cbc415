/**
 * Every Redis key Tally uses is built here. All keys of one shard carry the same hash tag
 * (`{<shard>}`), so every script touches a single Redis Cluster slot.
 */
export interface ShardKeys {
  /** Present once the shard's totals include the PostgreSQL base (written by a rebuild). */
  epoch: string;
  /** Hash: counter → total (PostgreSQL base + every delta since). */
  totals: string;
  /** Hash: `<bucket tag><counter>` → delta not yet flushed (see bucket-tags.ts). */
  pending: string;
  /** Set: the bucket tags `pending` has fields of, so readers need not scan it. */
  pendingTags: string;
  /**
   * Set: the counters whose Redis total an increment created while `pending` gathered, so
   * perhaps not yet in PostgreSQL: with the counters PostgreSQL names, every counter a usage
   * query must look up in Redis (engine/usage-query.ts). Renamed with `pending`.
   */
  pendingNewCounters: string;
  /** String: server time (ms) of the oldest pending delta. */
  pendingSince: string;
  /** The batch being flushed: `pending` and `pendingTags` renamed by the snapshot. */
  inflight: string;
  inflightTags: string;
  inflightNewCounters: string;
  /**
   * Set: new counters of batches an operator discarded: not in PostgreSQL until a batch with a
   * delta of theirs is applied (acknowledge.lua).
   */
  orphanCounters: string;
  /** Hash: batch id, when its oldest delta arrived, when it was snapshotted. */
  inflightMeta: string;
  /** Counts snapshots, so a reader can tell that a flush moved deltas while it was reading. */
  snapshots: string;
  /** The flush lock: reconcile and flush of one shard never run at once. */
  lock: string;
  /**
   * String, expiring: the most online replicas a flush of the shard saw lately. A flush that
   * sees fewer waits (engine/flusher.ts, keepSnapshot): a failover may be under way.
   */
  replicasSeen: string;
  /**
   * Hash: `<startMs>,<endMs>␟<counter>` → the counter's whole usage in that quota period
   * (PostgreSQL's part included), for periodic limits (engine/quota-seeding.ts).
   */
  quotaUsage: string;
  /** Hash: counter → its quota periods in `quotaUsage`, `<startMs>,<endMs>;...`. */
  quotaPeriods: string;
  /** Hash: a `quotaUsage` field being seeded → `<seeder's nonce>|<started, Redis ms>`. */
  quotaSeeding: string;
  /** String: counts the increment calls that applied something (increment.lua). */
  sequence: string;
  /** Where an idempotency key of `counter` is remembered. */
  idempotency(counter: string, key: string): string;
}

/** Separates the parts of a hash field or key suffix; counter names cannot contain it. */
export const fieldSeparator = '\u001f';

export function shardKeys(prefix: string, shard: number): ShardKeys {
  const base = `${prefix}:{${shard}}`;
  return {
    epoch: `${base}:epoch`,
    totals: `${base}:totals`,
    pending: `${base}:pending-deltas`,
    pendingTags: `${base}:pending-tags`,
    pendingNewCounters: `${base}:pending-new-counters`,
    pendingSince: `${base}:pending-since`,
    inflight: `${base}:inflight-deltas`,
    inflightTags: `${base}:inflight-tags`,
    inflightNewCounters: `${base}:inflight-new-counters`,
    orphanCounters: `${base}:orphan-counters`,
    inflightMeta: `${base}:inflight-meta`,
    snapshots: `${base}:snapshots`,
    lock: `${base}:lock`,
    replicasSeen: `${base}:replicas-seen`,
    sequence: `${base}:sequence`,
    quotaUsage: `${base}:quota-usage`,
    quotaPeriods: `${base}:quota-periods`,
    quotaSeeding: `${base}:quota-seeding`,
    idempotency: (counter, key) => `${base}:idem:${counter}${fieldSeparator}${key}`,
  };
}
