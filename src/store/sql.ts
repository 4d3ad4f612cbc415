/**
 * Every statement Tally sends to its PostgreSQL store, by the path that sends it. Nothing else
 * in the code names a `tally.` table: a second SQL store gets a module like this one beside it.
 * Statements on the hot paths (flush, usage, reconcile) carry a `name`, so node-postgres
 * prepares them once per connection.
 */
import pg from 'pg';
import type { Granularity } from '../counters/buckets.js';
import type { Selection } from '../counters/selection.js';
import { defaultPartitionTable, granularityTable } from './partition-layout.js';

/** SQL pieces of the horizon rule below; the arguments are placeholders. */
const inLedger = (shard: string, batch: string) =>
  `EXISTS (SELECT 1 FROM tally.applied_batches WHERE shard = ${shard} AND batch_id = ${batch})`;
const beforeHorizon = (shard: string, snapshotMs: string, marginMs: string) =>
  `EXISTS (SELECT 1 FROM tally.ledger_horizons
           WHERE shard = ${shard}
             AND to_timestamp((${snapshotMs}::bigint - ${marginMs}::bigint) / 1000.0)
                 < pruned_before)`;

/**
 * Whether the ledger's horizon refuses a batch: it has no ledger row, and it was snapshotted
 * (Redis' clock, ms) before the shard's `pruned_before` plus the clock margin (ms), so its row
 * may have been pruned and it may have been applied already (engine/ledger-pruning.ts). One
 * rule for the flush, reads and the operator's commands; the arguments are placeholders.
 */
const refusedByHorizon = (shard: string, batch: string, snapshotMs: string, marginMs: string) =>
  `(NOT ${inLedger(shard, batch)} AND ${beforeHorizon(shard, snapshotMs, marginMs)})`;

/**
 * Per shard, the transaction-level advisory lock a counter deletion and a flush of the shard
 * take (key: this + the shard).
 */
const shardDeletionLockBase = 500152356000;

/** Per deletion, the session advisory lock its runner holds (key: this + its id). */
const deletionClaimBase = 500152360000000;

/** A tombstone of counter `name` in batch `batch` of shard `shard` (migrations/0007). */
const tombstoned = (shard: string, batch: string, name: string) =>
  `SELECT 1 FROM tally.counter_tombstones t
   WHERE t.shard = ${shard} AND t.batch_id = ${batch} AND t.name = ${name}`;

/** Deleting counters (engine/deletion.ts). */
export const deletionSql = {
  /**
   * A deletion's record, running, claimed by this session in the same statement: a worker
   * finishing left-over deletions never sees it unclaimed.
   */
  begin: `WITH record AS (
            INSERT INTO tally.counter_deletions (requested_by, selector)
            VALUES ($1, $2::jsonb) RETURNING id
          )
          SELECT id::text, pg_try_advisory_lock(${deletionClaimBase} + id) AS claimed FROM record`,
  /** The counters deletion $1 took so far (a run after a crash takes them again). */
  namesTaken: `SELECT name FROM tally.counter_deletion_names WHERE deletion_id = $1`,
  /** Records that deletion $1 takes counters $2. */
  recordNames: `INSERT INTO tally.counter_deletion_names (deletion_id, name)
                SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING`,
  /** Deletions left running by a process that died, oldest first. */
  running: `SELECT id::text, requested_by, selector FROM tally.counter_deletions
            WHERE state = 'running' ORDER BY id`,
  /** Held by the process running deletion $1 for as long as it runs (a session lock). */
  tryClaim: `SELECT pg_try_advisory_lock(${deletionClaimBase} + $1::bigint) AS claimed`,
  release: `SELECT pg_advisory_unlock(${deletionClaimBase} + $1::bigint)`,
  /** The shard's deletion lock: flushes of shard $1 wait for this transaction. */
  lockShard: `SELECT pg_advisory_xact_lock(${shardDeletionLockBase} + $1::bigint)`,
  /** The counters $1 of shard $2: their totals; the names it had. */
  deleteTotals: `DELETE FROM tally.counters WHERE name = ANY($1::text[]) AND shard = $2
                 RETURNING name`,
  deleteBuckets: `DELETE FROM tally.counter_buckets WHERE name = ANY($1::text[])`,
  /**
   * Up to $2 bucket rows of counters $1, before the locked step (which then finds only the
   * rows flushed since): a counter with years of minute buckets must not hold its shard's
   * flushes for the whole delete.
   */
  deleteSomeBuckets: `DELETE FROM tally.counter_buckets
                      WHERE (name, granularity, bucket_start) IN (
                        SELECT name, granularity, bucket_start FROM tally.counter_buckets
                        WHERE name = ANY($1::text[]) LIMIT $2)`,
  /** Which of counters $1 PostgreSQL has (a dry run). */
  stored: `SELECT name FROM tally.counters WHERE name = ANY($1::text[])`,
  deleteLabels: `DELETE FROM tally.counter_labels WHERE name = ANY($1::text[])`,
  /**
   * Tombstones of counters $1 in batch $3 of shard $2, the batch in flight when the deletion
   * took their deltas out of Redis, unless the ledger has it (its deltas are in the rows just
   * deleted, and it is never applied again).
   */
  tombstone: `INSERT INTO tally.counter_tombstones (shard, batch_id, name)
              SELECT $2, $3, unnest($1::text[])
              WHERE NOT EXISTS (SELECT 1 FROM tally.applied_batches
                                WHERE shard = $2 AND batch_id = $3)
              ON CONFLICT DO NOTHING`,
  finish: `UPDATE tally.counter_deletions
           SET state = 'done', counters = $2, finished_at = now() WHERE id = $1`,
  /** Tombstones of batches the ledger has: those batches are never applied again. */
  pruneTombstones: `DELETE FROM tally.counter_tombstones t
                    WHERE EXISTS (SELECT 1 FROM tally.applied_batches a
                                  WHERE a.shard = t.shard AND a.batch_id = t.batch_id)`,
} as const;

/** The flush's transaction (engine/flusher.ts). */
export const flushSql = {
  /**
   * The batch's ledger row, unless the ledger has it already (`inserted` false), or the horizon
   * refuses the batch (`refused` true, nothing inserted). $4: the snapshot time, ms; $5: the
   * clock margin, ms.
   */
  claimBatch: {
    name: 'tally_claim_batch',
    // The shard's deletion lock first: a counter deletion of the shard and this transaction
    // run one after the other, so its statements see the deletion's tombstones, or the
    // deletion sees what it applied (engine/deletion.ts).
    text: `WITH refused AS (
             SELECT ${refusedByHorizon('$1', '$2', '$4', '$5')} AS refused,
                    pg_advisory_xact_lock(${shardDeletionLockBase} + $1::bigint)
           ), inserted AS (
             INSERT INTO tally.applied_batches (shard, batch_id, counters)
             SELECT $1, $2, $3 FROM refused WHERE NOT refused
             ON CONFLICT DO NOTHING
             RETURNING 1
           )
           SELECT refused, EXISTS (SELECT 1 FROM inserted) AS inserted,
                  (SELECT pruned_before FROM tally.ledger_horizons WHERE shard = $1) AS horizon
           FROM refused`,
  },
  /** $3 shard, $4 batch: the batch's tombstoned counters (deleted since) are skipped. */
  addToTotals: {
    name: 'tally_apply_counters',
    text: `INSERT INTO tally.counters AS c (name, shard, value)
           SELECT name, $3, delta FROM unnest($1::text[], $2::bigint[]) AS d (name, delta)
           WHERE NOT EXISTS (${tombstoned('$3', '$4', 'd.name')})
           ON CONFLICT (name) DO UPDATE
             SET value = c.value + EXCLUDED.value, updated_at = now()`,
  },
  /**
   * Holds the default partitions of the granularities a flush writes, before it writes them
   * (after each granularity's table, the order a detach takes them in): an attach of a range
   * then waits for the flush, or the flush for the attach. Unheld, a flush that routed a row to
   * a default partition just before a range for it was attached failed on the new constraint.
   */
  holdDefaultPartitions: (granularities: readonly Granularity[]) =>
    `LOCK TABLE ${granularities
      .map(
        (granularity) =>
          `ONLY tally.${pg.escapeIdentifier(granularityTable(granularity))}, ` +
          `tally.${pg.escapeIdentifier(defaultPartitionTable(granularity))}`,
      )
      .join(', ')} IN ROW EXCLUSIVE MODE`,
  /** $5 shard, $6 batch, as addToTotals. */
  addToBuckets: {
    name: 'tally_apply_buckets',
    text: `INSERT INTO tally.counter_buckets AS b (name, granularity, bucket_start, value)
           SELECT name, granularity, to_timestamp(start_ms / 1000.0), delta
           FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
             AS d (name, granularity, start_ms, delta)
           WHERE NOT EXISTS (${tombstoned('$5', '$6', 'd.name')})
           -- In key order, as the upkeep moves rows (bucketSql.moveUnpartitioned): two
           -- upserts of the same keys in different orders deadlock.
           ORDER BY name, granularity, start_ms
           ON CONFLICT (name, granularity, bucket_start) DO UPDATE
             SET value = b.value + EXCLUDED.value`,
  },
} as const;

/** Pruning the flush ledger, and its horizon's verdict on a batch (engine/ledger-pruning.ts). */
export const pruneSql = {
  /** Whether the horizon refuses batch $2 of shard $1, snapshotted at $3 ms ($4: the margin). */
  batchRefused: `SELECT ${refusedByHorizon('$1', '$2', '$3', '$4')} AS refused`,
  /** One pruner at a time per store, for a whole run (a session lock, released at the end). */
  tryLock: `SELECT pg_try_advisory_lock(500152355962) AS locked`,
  unlock: `SELECT pg_advisory_unlock(500152355962)`,
  /** PostgreSQL's clock now, ms: the pruning rule needs it to agree with Redis'. */
  clockMs: `SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms`,
  /**
   * The shards ($1 of them) with rows applied more than $2 ms ago besides their newest row (kept:
   * each shard's last flush stays readable): one index probe each, in one statement.
   */
  shardsWithOldRows: `SELECT s.shard FROM generate_series(0, $1::integer - 1) AS s(shard)
                      WHERE EXISTS (
                        SELECT 1 FROM tally.applied_batches b
                        WHERE b.shard = s.shard
                          AND b.applied_at < now() - make_interval(secs => $2::bigint / 1000.0)
                          AND b.applied_at < (SELECT max(m.applied_at) FROM tally.applied_batches m
                                              WHERE m.shard = s.shard))`,
  /**
   * Moves the shard's horizon to now − $2 ms, or to $3 (ms, the in-flight batch's snapshot time
   * less the clock margin) when that is earlier, and never back. Returns the horizon in force.
   */
  advanceHorizon: `INSERT INTO tally.ledger_horizons AS h (shard, pruned_before)
                   VALUES ($1, least(now() - make_interval(secs => $2::bigint / 1000.0),
                                     to_timestamp($3::bigint / 1000.0)))
                   ON CONFLICT (shard) DO UPDATE
                     SET pruned_before = greatest(h.pruned_before, EXCLUDED.pruned_before)
                   RETURNING pruned_before`,
  /**
   * Up to $3 of the shard's rows applied before $2, oldest first; never batch $4, never the
   * shard's newest row.
   */
  deleteBefore: `DELETE FROM tally.applied_batches
                 WHERE shard = $1 AND batch_id IN (
                   SELECT batch_id FROM tally.applied_batches
                   WHERE shard = $1 AND applied_at < $2 AND batch_id IS DISTINCT FROM $4
                     AND applied_at < (SELECT max(applied_at) FROM tally.applied_batches
                                       WHERE shard = $1)
                   ORDER BY applied_at LIMIT $3)`,
} as const;

/**
 * Bucket partitions and retention (engine/bucket-upkeep.ts). Table names come from
 * store/partition-layout.ts alone (a granularity and digits), never from input; they are quoted
 * all the same.
 */
export const bucketSql = {
  /** One upkeep at a time per store, for a whole run (a session lock, released at the end). */
  tryLock: `SELECT pg_try_advisory_lock(500152355963) AS locked`,
  unlock: `SELECT pg_advisory_unlock(500152355963)`,
  /**
   * Every table of the partition layout's naming in schema tally, and whether it is attached
   * (a detached one is left by a run that stopped between detaching and dropping it).
   */
  partitionTables: `SELECT c.relname AS table, c.relispartition AS attached
                    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'tally' AND c.relkind = 'r'
                      AND c.relname ~ '^counter_buckets_[a-z]+_p[0-9]+$'`,
  /** Whether the pre-partitioning table still has rows to move. */
  unpartitionedExists: `SELECT to_regclass('tally.counter_buckets_unpartitioned') IS NOT NULL
                          AS exists`,
  /**
   * Waits this long at most for a lock: a DDL statement waiting for one queues every flush
   * behind it, so it gives up and the next run tries again.
   */
  lockTimeout: (ms: number) => `SET LOCAL lock_timeout = ${Math.trunc(ms)}`,
  /**
   * Holds a default partition until commit, first, as attaching a range to its parent would:
   * without it a flush could add a row of the range between takeFromDefault and the attach,
   * which then fails.
   */
  lockDefault: (defaultTable: string) =>
    `LOCK TABLE tally.${pg.escapeIdentifier(defaultTable)} IN ACCESS EXCLUSIVE MODE`,
  /** An empty table shaped like the buckets, to become a range partition. */
  createTable: (table: string) =>
    `CREATE TABLE tally.${pg.escapeIdentifier(table)} (LIKE tally.counter_buckets)`,
  /**
   * Moves the rows the default partition took for [$1, $2) ms (the range was missing) into the
   * new table, before it is attached: attaching refuses while the default holds rows of it.
   */
  takeFromDefault: (defaultTable: string, table: string) =>
    `WITH moved AS (
       DELETE FROM tally.${pg.escapeIdentifier(defaultTable)}
       WHERE bucket_start >= to_timestamp($1::bigint / 1000.0)
         AND bucket_start < to_timestamp($2::bigint / 1000.0)
       RETURNING name, granularity, bucket_start, value)
     INSERT INTO tally.${pg.escapeIdentifier(table)} SELECT * FROM moved`,
  attach: (parent: string, table: string, startMs: number, endMs: number) =>
    `ALTER TABLE tally.${pg.escapeIdentifier(parent)}
       ATTACH PARTITION tally.${pg.escapeIdentifier(table)}
       FOR VALUES FROM ('${new Date(startMs).toISOString()}') TO ('${new Date(endMs).toISOString()}')`,
  /**
   * Not CONCURRENTLY: PostgreSQL refuses that beside a default partition. A plain detach holds
   * the granularity's table exclusively only for the catalog change; lockTimeout bounds the wait.
   */
  detach: (parent: string, table: string) =>
    `ALTER TABLE tally.${pg.escapeIdentifier(parent)} DETACH PARTITION tally.${pg.escapeIdentifier(table)}`,
  drop: (table: string) => `DROP TABLE IF EXISTS tally.${pg.escapeIdentifier(table)}`,
  /** Moves granularity $1's pruning horizon up to $2 (ms), never back. */
  advanceHorizon: `INSERT INTO tally.bucket_horizons AS h (granularity, pruned_before)
                   VALUES ($1, to_timestamp($2::bigint / 1000.0))
                   ON CONFLICT (granularity) DO UPDATE
                     SET pruned_before = greatest(h.pruned_before, EXCLUDED.pruned_before)`,
  /** Up to $2 rows of a default partition from before $1 (ms), the retention's cutoff. */
  deleteFromDefault: (defaultTable: string) =>
    `DELETE FROM tally.${pg.escapeIdentifier(defaultTable)}
     WHERE ctid = ANY (ARRAY(SELECT ctid FROM tally.${pg.escapeIdentifier(defaultTable)}
                             WHERE bucket_start < to_timestamp($1::bigint / 1000.0) LIMIT $2))`,
  /**
   * The key ending the next batch of up to $4 unpartitioned rows after key ($1, $2, $3; all
   * NULL: from the start), and each granularity's first and last bucket in it (ms). Bucket
   * starts travel as text: exact to the microsecond, as the key must be.
   */
  nextUnpartitionedBatch: `WITH batch AS (
                             SELECT name, granularity, bucket_start
                             FROM tally.counter_buckets_unpartitioned
                             WHERE $1::text IS NULL
                                OR (name, granularity, bucket_start) > ($1, $2, $3::timestamptz)
                             ORDER BY name, granularity, bucket_start LIMIT $4)
                           SELECT (SELECT json_build_array(name, granularity, bucket_start::text)
                                   FROM batch ORDER BY name DESC, granularity DESC,
                                                       bucket_start DESC LIMIT 1) AS last,
                                  (SELECT json_agg(json_build_array(granularity, first_ms, last_ms))
                                   FROM (SELECT granularity,
                                                (extract(epoch FROM min(bucket_start)) * 1000)::bigint
                                                  AS first_ms,
                                                (extract(epoch FROM max(bucket_start)) * 1000)::bigint
                                                  AS last_ms
                                         FROM batch GROUP BY granularity) AS g) AS spans`,
  /**
   * Moves the unpartitioned rows after key ($1, $2, $3) up to key ($4, $5, $6) into the
   * partitions, added to any row a flush wrote there meanwhile; rows before their granularity's
   * cutoff ($7: a JSON object of ms) are deleted, not moved. Returns how many it moved, and per
   * granularity how many it deleted (a JSON object), whose horizons must move.
   */
  moveUnpartitioned: `WITH removed AS (
                        DELETE FROM tally.counter_buckets_unpartitioned
                        WHERE ($1::text IS NULL
                               OR (name, granularity, bucket_start) > ($1, $2, $3::timestamptz))
                          AND (name, granularity, bucket_start) <= ($4, $5, $6::timestamptz)
                        RETURNING name, granularity, bucket_start, value,
                                  bucket_start >= coalesce(
                                    to_timestamp(($7::jsonb ->> granularity)::bigint / 1000.0),
                                    '-infinity') AS retained
                      ), moved AS (
                        INSERT INTO tally.counter_buckets AS b
                        SELECT name, granularity, bucket_start, value FROM removed WHERE retained
                        ORDER BY name, granularity, bucket_start -- as a flush writes them
                        ON CONFLICT (name, granularity, bucket_start) DO UPDATE
                          SET value = b.value + EXCLUDED.value
                        RETURNING 1)
                      SELECT (SELECT count(*) FROM moved)::integer AS moved,
                             (SELECT coalesce(json_object_agg(granularity, n), '{}')
                              FROM (SELECT granularity, count(*)::integer AS n FROM removed
                                    WHERE NOT retained GROUP BY granularity) AS p) AS pruned`,
  /** The last step of the move: reads leave the emptied table, which is dropped. */
  finishMove: [
    `CREATE OR REPLACE VIEW tally.counter_bucket_rows AS
       SELECT name, granularity, bucket_start, value FROM tally.counter_buckets`,
    `DROP TABLE tally.counter_buckets_unpartitioned`,
  ],
  /** Each granularity's pruning horizon, ms. */
  horizons: `SELECT granularity, (extract(epoch FROM pruned_before) * 1000)::bigint::text AS ms
             FROM tally.bucket_horizons`,
} as const;

/** Usage reads (engine/usage.ts). */
export const usageSql = {
  /**
   * Whether the in-flight batch is applied (or refused, which reads count as applied: the usual
   * case, a batch back from a restored backup), and the flushed buckets of one counter. $7: the
   * in-flight batch's snapshot time, ms; $8: the clock margin, ms.
   */
  flushedBuckets: {
    name: 'tally_usage',
    // In the ledger, or refused (not in it, before the horizon): one ledger lookup, not two.
    text: `SELECT (${inLedger('$1', '$2')} OR ${beforeHorizon('$1', '$7', '$8')}) AS applied,
                  -- Summed per bucket: a store moving its rows into the partitions can hold
                  -- a bucket in both tables (migrations/0006_partitioned_buckets.sql).
                  COALESCE((SELECT json_object_agg(start_ms::text, value::text)
                            FROM (SELECT (extract(epoch FROM bucket_start) * 1000)::bigint
                                           AS start_ms,
                                         sum(value) AS value
                                  FROM tally.counter_bucket_rows
                                  WHERE name = $3 AND granularity = $4
                                    AND bucket_start >= to_timestamp($5 / 1000.0)
                                    AND bucket_start < to_timestamp($6 / 1000.0)
                                  GROUP BY 1) AS b), '{}') AS buckets,
                  (SELECT (extract(epoch FROM pruned_before) * 1000)::bigint::text
                   FROM tally.bucket_horizons WHERE granularity = $4) AS pruned_before_ms`,
  },
} as const;

/** Reconcile (engine/reconciler.ts). */
export const reconcileSql = {
  /** Whether the in-flight batch is applied, and one page of the shard's totals by name. */
  totalsPage: {
    name: 'tally_reconcile_page',
    text: `SELECT EXISTS (SELECT 1 FROM tally.applied_batches WHERE shard = $1 AND batch_id = $2)
                  AS applied,
                COALESCE((SELECT json_agg(json_build_object('name', name, 'value', value::text)
                                          ORDER BY name)
                          FROM (SELECT name, value FROM tally.counters
                                WHERE shard = $1 AND name > $3
                                ORDER BY name LIMIT $4) AS page), '[]') AS rows`,
  },
  recordRedisLoss: `INSERT INTO tally.redis_losses (shard) VALUES ($1)`,
  recordRewind: `INSERT INTO tally.redis_losses (shard, calls_lost) VALUES ($1, $2)`,
  unreportedLosses: `SELECT detected_at AS found_at, calls_lost FROM tally.redis_losses
                     WHERE shard = $1 AND reported_at IS NULL`,
  markLossesReported: `UPDATE tally.redis_losses SET reported_at = now()
                       WHERE shard = $1 AND reported_at IS NULL
                       RETURNING detected_at AS found_at, calls_lost`,
} as const;

/** status() (tally.ts). */
export const statusSql = {
  /**
   * Each shard's latest flush: one backward step of the (shard, applied_at) index per shard
   * (migration 0003), not a scan of the whole ledger as `max(…) GROUP BY shard` was.
   */
  lastFlushPerShard: `SELECT s.shard, (SELECT max(b.applied_at) FROM tally.applied_batches b
                                       WHERE b.shard = s.shard) AS at
                      FROM generate_series(0, $1::integer - 1) AS s(shard)`,
  schemaVersion: `SELECT coalesce(max(version), 0) AS version FROM tally.schema_migrations`,
  unreportedLossesPerShard: `SELECT shard, count(*)::integer AS losses FROM tally.redis_losses
                             WHERE reported_at IS NULL GROUP BY shard`,
  /** Each granularity's pruning horizon, and whether an upgraded store's rows still move. */
  buckets: `SELECT (SELECT coalesce(json_object_agg(granularity, pruned_before), '{}')
                    FROM tally.bucket_horizons) AS horizons,
                   to_regclass('tally.counter_buckets_unpartitioned') IS NOT NULL AS moving`,
} as const;

/** The store's recorded settings (store/settings.ts). */
export const settingsSql = {
  recordIfAbsent: `INSERT INTO tally.settings (key, value) VALUES ($1, $2::jsonb)
                   ON CONFLICT DO NOTHING`,
  read: `SELECT value FROM tally.settings WHERE key = $1`,
  wasSetUp: `SELECT 1 FROM tally.settings WHERE key = 'set_up_at'`,
  markSetUp: `INSERT INTO tally.settings (key, value) VALUES ('set_up_at', to_jsonb(now()))
              ON CONFLICT DO NOTHING`,
  /** Serialises recordGranularities: two first starts must not both find no record. */
  lockGranularities: `SELECT pg_advisory_xact_lock(500152355964)`,
  /**
   * Adds the granularities kept ($1, a JSON array) to the record and returns those it lacked
   * before, for which it moves the pruning horizon to now: their buckets exist from now on
   * only. The first record (a new store, or one from before the record) adds none. Nothing
   * leaves the record: a process keeping fewer (a CLI run without TALLY_BUCKETS) changes
   * nothing.
   */
  recordGranularities: `WITH old AS (
                          SELECT value FROM tally.settings WHERE key = 'buckets'
                        ), added AS (
                          SELECT g FROM jsonb_array_elements_text($1::jsonb) AS g
                          WHERE EXISTS (SELECT 1 FROM old) AND NOT (SELECT value FROM old) ? g
                        ), horizons AS (
                          INSERT INTO tally.bucket_horizons AS h (granularity, pruned_before)
                          SELECT g, now() FROM added
                          ON CONFLICT (granularity) DO UPDATE
                            SET pruned_before = greatest(h.pruned_before, EXCLUDED.pruned_before)
                        ), recorded AS (
                          INSERT INTO tally.settings AS s (key, value) VALUES ('buckets', $1::jsonb)
                          ON CONFLICT (key) DO UPDATE
                            SET value = (SELECT jsonb_agg(DISTINCT g ORDER BY g)
                                         FROM jsonb_array_elements_text(s.value || EXCLUDED.value)
                                           AS g)
                          WHERE NOT s.value @> EXCLUDED.value
                        )
                        SELECT g FROM added`,
} as const;

/** The migration runner (store/migrator.ts). */
export const migrationSql = {
  /**
   * Serialises migration runs. The key is 'tally' in ASCII, so it is easy to recognise in
   * pg_locks.
   */
  lock: `SELECT pg_advisory_xact_lock(500152355961)`,
  createSchema: `CREATE SCHEMA IF NOT EXISTS tally`,
  /**
   * The ledger of applied migrations, and the column that says which of them older code may
   * run against (added to ledgers made before it existed: their rows say false, which only
   * matters to code that does not know them, and none does).
   */
  createLedger: [
    `CREATE TABLE IF NOT EXISTS tally.schema_migrations (
       version integer PRIMARY KEY,
       name text NOT NULL,
       checksum text NOT NULL,
       applied_at timestamptz NOT NULL DEFAULT now()
     )`,
    `ALTER TABLE tally.schema_migrations
       ADD COLUMN IF NOT EXISTS older_code_compatible boolean NOT NULL DEFAULT false`,
  ],
  ledgerExists: `SELECT to_regclass('tally.schema_migrations') IS NOT NULL AS found`,
  ledgerHasCompatibility: `SELECT 1 FROM information_schema.columns
                           WHERE table_schema = 'tally' AND table_name = 'schema_migrations'
                             AND column_name = 'older_code_compatible'`,
  applied: `SELECT version, name, checksum, older_code_compatible
            FROM tally.schema_migrations ORDER BY version`,
  /** A ledger made before the compatibility column: its rows are all known to this code. */
  appliedBeforeCompatibility: `SELECT version, name, checksum, false AS older_code_compatible
                               FROM tally.schema_migrations ORDER BY version`,
  appliedAt: `SELECT version, applied_at FROM tally.schema_migrations`,
  record: `INSERT INTO tally.schema_migrations (version, name, checksum, older_code_compatible)
           VALUES ($1, $2, $3, $4)`,
} as const;

/** How a statement carries its values: as placeholders, or written into it as literals. */
interface Values {
  add(value: string | number | readonly string[], cast?: string): string;
}

/** Placeholders numbered as values are added. */
class Parameters implements Values {
  readonly values: unknown[] = [];
  add(value: string | number | readonly string[], cast = ''): string {
    this.values.push(value);
    return `$${this.values.length}${cast}`;
  }
}

/**
 * Values written into the statement, quoted by node-postgres' escapeLiteral: for COPY, which
 * takes no placeholders. Numbers must be whole.
 */
/** An in-flight batch as a query read it from Redis (snapshot time: Redis' clock, ms). */
interface InflightBatchRead {
  shard: number;
  batchId: string;
  snapshotMs: string;
}

class Literals implements Values {
  add(value: string | number | readonly string[], cast = ''): string {
    if (typeof value === 'number') {
      if (!Number.isSafeInteger(value)) throw new Error(`not a whole number: ${value}`);
      return `${value}${cast}`;
    }
    if (typeof value === 'string') return `${pg.escapeLiteral(value)}${cast}`;
    return `ARRAY[${value.map((item) => pg.escapeLiteral(item)).join(', ')}]${cast}`;
  }
}

/**
 * The string after every string that starts with `prefix`, in byte order: the prefix with its
 * last code point raised by one (dropped first when it is the last code point there is). None
 * for '' (everything starts with it).
 */
function prefixEnd(prefix: string): string | undefined {
  const points = Array.from(prefix);
  while (points.length > 0) {
    const last = (points.pop() ?? '').codePointAt(0) ?? 0;
    if (last < 0x10ffff) {
      // Past the surrogates, which are not characters.
      const next = last + 1 === 0xd800 ? 0xe000 : last + 1;
      return points.join('') + String.fromCodePoint(next);
    }
  }
  return undefined;
}

/** Conditions on counter_labels `l` for the counters a selection takes. */
function selectionConditions(selection: Selection, parameters: Values): string[] {
  if (selection.kind === 'plain') {
    const conditions = ['l.base IS NULL'];
    if (selection.prefix === '') return conditions;
    conditions.push(`(l.name COLLATE "C") >= ${parameters.add(selection.prefix)}`);
    const end = prefixEnd(selection.prefix);
    if (end !== undefined) conditions.push(`(l.name COLLATE "C") < ${parameters.add(end)}`);
    return conditions;
  }
  const conditions = [`l.base = ${parameters.add(selection.base)}`];
  const single = selection.where.filter(([, values]) => values.length === 1);
  if (single.length > 0) {
    // One containment test, answered by the GIN index on labels.
    const wanted = Object.fromEntries(single.map(([key, values]) => [key, values[0]]));
    conditions.push(`l.labels @> ${parameters.add(JSON.stringify(wanted), '::jsonb')}`);
  }
  for (const [key, values] of selection.where) {
    if (values.length === 1) continue;
    conditions.push(
      `l.labels ->> ${parameters.add(key)} = ANY(${parameters.add(values, '::text[]')})`,
    );
  }
  return conditions;
}

/**
 * A counter's group key in SQL, as engine/query-spec.ts `groupKey` writes it: each groupBy
 * label's value after \x02 (\x01 when absent), joined by \x1f, in byte order.
 */
function groupKeySql(selection: Selection, parameters: Values): string {
  if (selection.kind === 'plain') return `(E'\\x02' || l.name) COLLATE "C"`;
  if (selection.groupBy.length === 0) return `''::text COLLATE "C"`;
  const parts = selection.groupBy.map(
    (key) => `coalesce(E'\\x02' || (l.labels ->> ${parameters.add(key)}), E'\\x01')`,
  );
  return `concat_ws(E'\\x1f', ${parts.join(', ')}) COLLATE "C"`;
}

/** Usage queries, counter listings and label values (engine/usage-query.ts, discovery.ts). */
export const querySql = {
  /**
   * Opens a usage query's read-only snapshot and reads in it, in one round trip (a simple
   * query, so its values are written in as quoted literals):
   * 0. a lock of the buckets the query reads, which takes no snapshot;
   * 1. per in-flight batch, whether the ledger has it or refuses it (batchVerdicts) — the
   *    first statement that takes the snapshot;
   * 2. up to `limit` names of the selected counters, in no order, so that a narrow `where` is
   *    answered by the labels' GIN index;
   * 3. how far `granularity` has been pruned (bucketSql.advanceHorizon), ms as text, if at all.
   * No statement timeout: the COPY of an export runs as long as its reader reads; the engine
   * stops it when PostgreSQL sends nothing for the query timeout.
   */
  openQuerySnapshot(
    batches: readonly InflightBatchRead[],
    clockMarginMs: number,
    selection: Selection,
    limit: number,
    granularity: Granularity,
  ): string {
    const literals = new Literals();
    const conditions = selectionConditions(selection, literals);
    // Locked before the first statement takes the snapshot: a range detached, or the view
    // pointed elsewhere by the end of a move (catalog changes, which MVCC does not cover)
    // after it would make the COPY miss rows the snapshot still counts as there. Locking the
    // view locks every table under it, every partition of every granularity: the upkeep's
    // DDL waits for the query (and, past its lock wait, for the next run).
    return `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
            LOCK TABLE tally.counter_bucket_rows IN ACCESS SHARE MODE;
            ${querySql.batchVerdicts(batches, clockMarginMs)};
            SELECT l.name FROM tally.counter_labels l
            WHERE ${conditions.join(' AND ')} LIMIT ${literals.add(limit)};
            SELECT (extract(epoch FROM pruned_before) * 1000)::bigint::text AS ms
            FROM tally.bucket_horizons WHERE granularity = ${literals.add(granularity)}`;
  },
  /**
   * Per in-flight batch, whether the ledger has it, or refuses it (reads count a refused batch
   * as applied, as usageSql does, until an operator resolves it): rows of shard, in_ledger,
   * refused. Values written in as literals.
   */
  batchVerdicts(batches: readonly InflightBatchRead[], clockMarginMs: number): string {
    const literals = new Literals();
    const shards = literals.add(
      batches.map((batch) => String(batch.shard)),
      '::integer[]',
    );
    const ids = literals.add(
      batches.map((batch) => batch.batchId),
      '::text[]',
    );
    const snapshots = literals.add(
      batches.map((batch) => batch.snapshotMs),
      '::bigint[]',
    );
    const margin = literals.add(clockMarginMs);
    return `SELECT s.shard, ${inLedger('s.shard', 's.batch')} AS in_ledger,
                   ${beforeHorizon('s.shard', 's.snapshot_ms', margin)} AS refused
            FROM unnest(${shards}, ${ids}, ${snapshots}) AS s(shard, batch, snapshot_ms)`;
  },
  /** The longest one statement of this transaction may run ($1: ms, as text). */
  statementTimeout: `SELECT set_config('statement_timeout', $1, true)`,
  /**
   * The selected counters' flushed buckets of `granularity` summed per group and window, as
   * COPY text: lines of key, window index, value in group order, then window order. `boundaries`
   * are the windows' starts and the last one's end (ms); `after` the group key a page starts
   * after; `groups` how many groups at most.
   *
   * COPY, not a cursor: PostgreSQL never plans a cursor's query in parallel (it may be
   * suspended), and summing a month of 100k tenants took 1.7× as long that way. COPY runs the
   * query whole, in parallel, and streams its rows with backpressure. It takes no placeholders,
   * so the values are written in as quoted literals.
   */
  windows(
    selection: Selection,
    granularity: string,
    boundaries: readonly number[],
    order: { descending: boolean; after: string | undefined; groups: number | undefined },
  ): string {
    const literals = new Literals();
    const key = groupKeySql(selection, literals);
    const conditions = selectionConditions(selection, literals);
    const direction = order.descending ? 'DESC' : 'ASC';
    if (order.after !== undefined) {
      conditions.push(`${key} ${order.descending ? '<' : '>'} ${literals.add(order.after)}`);
    }
    // As the flush writes bucket starts (to_timestamp of ms), so a boundary equals its bucket's
    // start, and every instant Tally takes (years 0000–9999) is one PostgreSQL reads.
    const instant = (ms: number | undefined) => `to_timestamp(${literals.add(ms ?? 0)} / 1000.0)`;
    const bounds = `ARRAY[${boundaries.map(instant).join(', ')}]`;
    // Summed per counter first, then per group: the group key is built once per counter, not
    // once per bucket row (a month of days is 30 rows per counter), which halved the time. One
    // window (a month, a total): no window to work out per row nor to group by, which the
    // planner also takes for 30× fewer groups than width_bucket gets it to estimate.
    const single = boundaries.length === 2;
    const window = single ? '' : `width_bucket(b.bucket_start, ${bounds}) - 1 AS window_index, `;
    const sums = `SELECT ${key} AS key, ${single ? '0' : 'p.window_index'} AS window_index,
                         sum(p.value)::text AS value
                  FROM (SELECT b.name, ${window}sum(b.value) AS value
                        FROM tally.counter_bucket_rows b
                        WHERE b.granularity = ${literals.add(granularity)}
                          AND b.bucket_start >= ${instant(boundaries[0])}
                          AND b.bucket_start < ${instant(boundaries.at(-1))}
                          AND b.name IN (SELECT l.name FROM tally.counter_labels l
                                         WHERE ${conditions.join(' AND ')})
                        GROUP BY ${single ? '1' : '1, 2'}) AS p
                  JOIN tally.counter_labels l ON l.name = p.name
                  GROUP BY ${single ? '1' : '1, 2'}`;
    const limited =
      order.groups === undefined
        ? sums
        : `SELECT key, window_index, value
           FROM (SELECT *, dense_rank() OVER (ORDER BY key ${direction}) AS rank FROM (${sums}) AS s) AS r
           WHERE rank <= ${literals.add(order.groups)}`;
    return `COPY (${limited} ORDER BY 1 ${direction}, 2) TO STDOUT`;
  },
  /** Up to `limit` names of the selected counters after `after`, in byte order. */
  counterNames(
    selection: Selection,
    after: string | undefined,
    limit: number,
  ): { text: string; values: unknown[] } {
    const parameters = new Parameters();
    const conditions = selectionConditions(selection, parameters);
    if (after !== undefined) conditions.push(`(l.name COLLATE "C") > ${parameters.add(after)}`);
    const text = `SELECT l.name FROM tally.counter_labels l
                  WHERE ${conditions.join(' AND ')}
                  ORDER BY (l.name COLLATE "C") LIMIT ${parameters.add(limit)}`;
    return { text, values: parameters.values };
  },
  /** Up to `limit` distinct values of `label` among the selected counters, in byte order. */
  labelValues(
    selection: Selection,
    label: string,
    options: { prefix: string; after: string | undefined; limit: number },
  ): { text: string; values: unknown[] } {
    const parameters = new Parameters();
    const conditions = selectionConditions(selection, parameters);
    const value = `((l.labels ->> ${parameters.add(label)}) COLLATE "C")`;
    conditions.push(`${value} IS NOT NULL`);
    if (options.prefix !== '')
      conditions.push(`starts_with(${value}, ${parameters.add(options.prefix)})`);
    if (options.after !== undefined) conditions.push(`${value} > ${parameters.add(options.after)}`);
    const text = `SELECT DISTINCT ${value} AS value FROM tally.counter_labels l
                  WHERE ${conditions.join(' AND ')}
                  ORDER BY 1 LIMIT ${parameters.add(options.limit)}`;
    return { text, values: parameters.values };
  },
} as const;
