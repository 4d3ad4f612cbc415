-- tally: older code compatible
--
-- 0003: the last flush of each shard, read in O(shards) index lookups.
--
-- `status()` (every /metrics scrape, `tally status`) wants each shard's latest applied_at. Over
-- the ledger's (applied_at) index that was `max(applied_at) … GROUP BY shard`: a scan of the
-- whole ledger, which grows with every flush. With (shard, applied_at) each shard's latest row
-- is one backward index step. Additive: older code keeps running against it.
CREATE INDEX applied_batches_shard_applied_at ON tally.applied_batches (shard, applied_at);
