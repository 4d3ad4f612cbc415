-- 0006: time buckets in partitions, so that retention drops whole partitions instead of
-- deleting rows (docs/design.md, "Pruning: partitions dropped, not rows deleted").
--
-- counter_buckets becomes a tree: one partition per granularity, each split by bucket_start
-- into ranges (minute: a UTC day, hour: a UTC month, day and month: a UTC year). The worker
-- creates the ranges ahead of time and drops those wholly past the retention
-- (src/engine/bucket-upkeep.ts). Each granularity also has a DEFAULT partition, so a row
-- whose range does not exist yet (a store no worker maintains, a flush that lagged past a
-- dropped range) is kept rather than failing its whole flush; the worker moves such rows into
-- their range when it creates it, and deletes those past the retention.
--
-- Reads go through the view tally.counter_bucket_rows. An existing store's rows stay in the old
-- table, renamed counter_buckets_unpartitioned, which the view adds in, while the worker moves
-- them over in short transactions (an offline copy of 10M rows took two minutes: too long to
-- stop flushes for). When it is empty the worker drops it and the view reads only the new
-- tree. An empty old table (a new store) is dropped here at once.
--
-- Not older code compatible: older code reads tally.counter_buckets alone, which misses the
-- rows still to move.

ALTER TABLE tally.counter_buckets RENAME TO counter_buckets_unpartitioned;
ALTER INDEX tally.counter_buckets_pkey RENAME TO counter_buckets_unpartitioned_pkey;

CREATE TABLE tally.counter_buckets (
  name text NOT NULL,
  granularity text NOT NULL,
  bucket_start timestamptz NOT NULL,
  value bigint NOT NULL,
  PRIMARY KEY (name, granularity, bucket_start)
) PARTITION BY LIST (granularity);

CREATE TABLE tally.counter_buckets_minute PARTITION OF tally.counter_buckets
  FOR VALUES IN ('minute') PARTITION BY RANGE (bucket_start);
CREATE TABLE tally.counter_buckets_hour PARTITION OF tally.counter_buckets
  FOR VALUES IN ('hour') PARTITION BY RANGE (bucket_start);
CREATE TABLE tally.counter_buckets_day PARTITION OF tally.counter_buckets
  FOR VALUES IN ('day') PARTITION BY RANGE (bucket_start);
CREATE TABLE tally.counter_buckets_month PARTITION OF tally.counter_buckets
  FOR VALUES IN ('month') PARTITION BY RANGE (bucket_start);

CREATE TABLE tally.counter_buckets_minute_default PARTITION OF tally.counter_buckets_minute DEFAULT;
CREATE TABLE tally.counter_buckets_hour_default PARTITION OF tally.counter_buckets_hour DEFAULT;
CREATE TABLE tally.counter_buckets_day_default PARTITION OF tally.counter_buckets_day DEFAULT;
CREATE TABLE tally.counter_buckets_month_default PARTITION OF tally.counter_buckets_month DEFAULT;

-- How far each granularity has been pruned: buckets before `pruned_before` may be gone. Written
-- before any bucket row is deleted, so a read reaching before it is refused even after the
-- retention is lengthened, never answered with a silent 0.
CREATE TABLE tally.bucket_horizons (
  granularity text PRIMARY KEY,
  pruned_before timestamptz NOT NULL
);

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM tally.counter_buckets_unpartitioned) THEN
    CREATE VIEW tally.counter_bucket_rows AS
      SELECT name, granularity, bucket_start, value FROM tally.counter_buckets
      UNION ALL
      SELECT name, granularity, bucket_start, value FROM tally.counter_buckets_unpartitioned;
  ELSE
    DROP TABLE tally.counter_buckets_unpartitioned;
    CREATE VIEW tally.counter_bucket_rows AS
      SELECT name, granularity, bucket_start, value FROM tally.counter_buckets;
  END IF;
END
$$;
