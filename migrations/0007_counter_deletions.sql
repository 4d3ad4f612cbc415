-- 0007: deleting counters (docs/design.md, "Deleting counters").
--
-- Not compatible with older code: an older flush would apply the deltas of a deleted counter
-- that were in flight when it was deleted (it reads no tombstones), and an older flusher
-- paused past its lock could freeze new deltas under a deletion.

-- Every deletion: who asked, when, for which counters, how many went. `running` until every
-- shard is done; a process that died meanwhile leaves it running, and the worker finishes it
-- (engine/deletion.ts, finishDeletions).
CREATE TABLE tally.counter_deletions (
  id bigserial PRIMARY KEY,
  requested_at timestamptz NOT NULL DEFAULT now(),
  requested_by text NOT NULL,
  -- { "counter": name } or { "counter": base, "where": {...} } or { "prefix": ... }
  selector jsonb NOT NULL,
  state text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done')),
  counters bigint NOT NULL DEFAULT 0,
  finished_at timestamptz
);
CREATE INDEX counter_deletions_running ON tally.counter_deletions (id) WHERE state = 'running';

-- The counters each deletion took, written with each chunk's deletion: a deletion run again
-- after a crash takes them again (a selection no longer finds the ones PostgreSQL lost), and
-- the record says what went.
CREATE TABLE tally.counter_deletion_names (
  deletion_id bigint NOT NULL REFERENCES tally.counter_deletions (id),
  name text NOT NULL,
  PRIMARY KEY (deletion_id, name)
);

-- The deleted counters whose deltas sat in their shard's in-flight batch at the deletion: a
-- flush of that batch still to come (its flusher read the batch before the deletion took it
-- out of Redis) skips them. Pruned once the batch is in the ledger (engine/ledger-pruning.ts).
CREATE TABLE tally.counter_tombstones (
  shard integer NOT NULL,
  batch_id text NOT NULL,
  name text NOT NULL,
  PRIMARY KEY (shard, batch_id, name)
);
