-- 0002: a record of each time Redis was found to have lost a shard's data.
--
-- A running process that finds a shard's epoch marker gone (in a store that was set up) rebuilds
-- the shard from PostgreSQL at once, so by the time an operator runs `tally reconcile` Redis
-- and PostgreSQL agree again and nothing in Redis shows that increments were lost. The rebuild
-- writes a row here first; `tally reconcile` reports every row it has not reported yet, and a
-- repair marks them reported.
CREATE TABLE tally.redis_losses (
  id bigserial PRIMARY KEY,
  shard integer NOT NULL,
  detected_at timestamptz NOT NULL DEFAULT now(),
  reported_at timestamptz
);

CREATE INDEX redis_losses_unreported ON tally.redis_losses (shard) WHERE reported_at IS NULL;
