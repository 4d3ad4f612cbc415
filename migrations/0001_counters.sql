-- 0001: the counters schema.
--
-- Every table lives in schema `tally`. Counter values stay within ±(2^53−1) so that each one is
-- exact as a JavaScript number and as a Lua double in Redis; the CHECKs make PostgreSQL refuse
-- anything past that instead of storing a value the rest of the system cannot represent.
-- Tables holding counter data are keyed by counter name first, so they can be distributed by
-- name (Citus) without changing a query.

-- Facts fixed when the store is first set up, such as the shard count.
CREATE TABLE tally.settings (
  key text PRIMARY KEY,
  value jsonb NOT NULL
);

-- The flushed total of each counter. `shard` is derived from the name and the store's fixed
-- shard count; it is kept so that reconciling one shard reads only that shard's rows.
CREATE TABLE tally.counters (
  name text PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 256),
  shard integer NOT NULL,
  value bigint NOT NULL CHECK (value BETWEEN -9007199254740991 AND 9007199254740991),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX counters_shard_name ON tally.counters (shard, name);

-- The flushed total of each counter per UTC time bucket (granularity such as 'hour', 'day').
-- No range CHECK here: a bucket sums the increments made inside it, which can reach twice the
-- counter range when a counter swings from one end to the other; a CHECK would then stop the
-- whole shard from flushing. Reads refuse a bucket value past ±(2^53−1) instead.
CREATE TABLE tally.counter_buckets (
  name text NOT NULL,
  granularity text NOT NULL,
  bucket_start timestamptz NOT NULL,
  value bigint NOT NULL,
  PRIMARY KEY (name, granularity, bucket_start)
);

-- The flush ledger: one row per batch applied. A flush inserts its batch id in the same
-- transaction that applies the batch's deltas; finding the row already there means the batch
-- was applied before, so a retried batch is never applied twice.
CREATE TABLE tally.applied_batches (
  shard integer NOT NULL,
  batch_id text NOT NULL,
  counters integer NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (shard, batch_id)
);

-- Old ledger rows are pruned by age.
CREATE INDEX applied_batches_applied_at ON tally.applied_batches (applied_at);
