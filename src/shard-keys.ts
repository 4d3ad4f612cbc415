/**
 * Every Redis key Tally uses is built here. All keys of one shard carry the same hash tag
 * (`{<shard>}`), so every script touches a single Redis Cluster slot.
 */
export interface ShardKeys {
  /** Present once the shard's totals include the PostgreSQL base (written by a rebuild). */
  epoch: string;
  /** Hash: counter → total (PostgreSQL base + every delta since). */
  totals: string;
  /** Hash: counter → delta not yet flushed. */
  pending: string;
  /** Hash: `granularity␟bucketStartMs␟counter` → delta not yet flushed. */
  pendingBuckets: string;
  /** String: server time (ms) of the oldest pending delta. */
  pendingSince: string;
  /** The batch being flushed: `pending` and `pendingBuckets` renamed by the snapshot. */
  inflight: string;
  inflightBuckets: string;
  /** Hash: batch id, when its oldest delta arrived, when it was snapshotted. */
  inflightMeta: string;
  /** Counts snapshots, so a reader can tell that a flush moved deltas while it was reading. */
  snapshots: string;
  /** The flush lock: reconcile and flush of one shard never run at once. */
  lock: string;
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
    pending: `${base}:pending`,
    pendingBuckets: `${base}:pending-buckets`,
    pendingSince: `${base}:pending-since`,
    inflight: `${base}:inflight`,
    inflightBuckets: `${base}:inflight-buckets`,
    inflightMeta: `${base}:inflight-meta`,
    snapshots: `${base}:snapshots`,
    lock: `${base}:lock`,
    idempotency: (counter, key) => `${base}:idem:${counter}${fieldSeparator}${key}`,
  };
}

/** The hash field of a bucket delta: its bucket's prefix, then the counter. */
export function bucketField(granularity: string, startMs: number, counter: string): string {
  return bucketFieldPrefix(granularity, startMs) + counter;
}

/** What the fields of every counter in one bucket start with (increment.lua appends the name). */
export function bucketFieldPrefix(granularity: string, startMs: number): string {
  return `${granularity}${fieldSeparator}${startMs}${fieldSeparator}`;
}

export function parseBucketField(field: string): {
  granularity: string;
  startMs: number;
  counter: string;
} {
  const first = field.indexOf(fieldSeparator);
  const second = field.indexOf(fieldSeparator, first + 1);
  return {
    granularity: field.slice(0, first),
    startMs: Number(field.slice(first + 1, second)),
    counter: field.slice(second + 1),
  };
}
