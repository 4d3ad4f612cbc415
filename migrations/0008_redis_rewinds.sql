-- 0008: a Redis loss can also be a shard that went back in time.
--
-- A failover to a replica that was behind, or a restart from an AOF that lacks its last second,
-- leaves a shard consistent but older: its totals and pending deltas lack increments that were
-- acknowledged. Nothing in Redis shows it; a process that saw a later value of the shard's
-- sequence (increment.lua) notices and records it here: `calls_lost`, the least number of
-- increment calls (each one or more increments) that are gone. NULL: the shard's data was gone
-- altogether (found by a rebuild, 0002). Compatible with older code (it never reads the column).
ALTER TABLE tally.redis_losses ADD COLUMN IF NOT EXISTS calls_lost bigint;
