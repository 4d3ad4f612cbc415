-- tally: older code compatible
--
-- 0004: how far each shard's flush ledger has been pruned.
--
-- The worker deletes ledger rows older than TALLY_LEDGER_RETENTION_MS. A batch whose row was
-- deleted could be applied a second time if it ever came back (a Redis restored from an old
-- backup), so before deleting, the pruner records the shard's horizon here: rows applied before
-- `pruned_before` may be gone. A flush then refuses a batch snapshotted before the horizon whose
-- row it does not find, instead of applying it blindly (docs/operations.md, "A refused batch").
-- Additive: older code keeps running against it (and does not prune).
CREATE TABLE tally.ledger_horizons (
  shard integer PRIMARY KEY,
  pruned_before timestamptz NOT NULL
);
