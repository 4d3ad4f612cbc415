import { tagBuckets } from '../redis/bucket-tags.js';
import {
  bucketCount,
  bucketStarts,
  isGranularity,
  toEpochMs,
  type Granularity,
} from '../counters/buckets.js';
import { redisFailure } from '../redis/connection.js';
import { postgresFailure } from '../store/pool.js';
import { usageSql } from '../store/sql.js';
import { canonicalName, type CounterRef } from '../counters/counter-name.js';
import { checkNotPruned, checkRetained } from '../counters/retention.js';
import { TallyError, ValidationError } from '../errors.js';
import type { EngineContext } from './engine-context.js';
import { ledgerClockMarginMs } from './ledger-pruning.js';
import { shardOf } from '../counters/sharding.js';
import { shardKeys } from '../redis/shard-keys.js';
import type { ScriptReply } from '../redis/scripts.js';

export interface UsageQuery {
  /** Start of the period (inclusive; the bucket holding it is the first one). */
  from: Date | number;
  /** End of the period (exclusive). */
  to: Date | number;
  granularity: Granularity;
}

export interface UsageBucket {
  start: Date;
  value: number;
}

/** The most buckets one usage query may return. */
export const maxUsageBuckets = 10_000;
/** Reads retried when a flush moved deltas in the middle of one; more means a broken flush. */
export const maxReadAttempts = 10;

/** The period's bucket starts, once the query is known to be one Tally can answer. */
function periodStarts(ctx: EngineContext, query: UsageQuery): { starts: number[]; toMs: number } {
  if (!isGranularity(query.granularity) || !ctx.config.buckets.includes(query.granularity)) {
    throw new ValidationError(
      `Usage is kept in ${ctx.config.buckets.join(', ')} buckets; ` +
        `${JSON.stringify(query.granularity)} is not one of them (option buckets).`,
    );
  }
  const fromMs = toEpochMs(query.from, 'from');
  const toMs = toEpochMs(query.to, 'to');
  if (toMs <= fromMs) throw new ValidationError('Usage needs from < to.');
  // Counted before listed: 0000–9999 in hours would be 87.6M starts (5 s and 1.5 GB).
  const count = bucketCount(query.granularity, fromMs, toMs);
  if (count > maxUsageBuckets) {
    throw new ValidationError(
      `That period has ${count} ${query.granularity} buckets; ask for at most ` +
        `${maxUsageBuckets} at a time.`,
    );
  }
  checkRetained(ctx.config.retention, query.granularity, fromMs, Date.now());
  return { starts: bucketStarts(query.granularity, fromMs, toMs), toMs };
}

/** What one consistent read found: the unflushed deltas per bucket, the flushed buckets. */
export interface UsageRead {
  /** Bucket start → delta not yet in PostgreSQL, summed exactly. */
  unflushed: Map<number, bigint>;
  /** Bucket start (ms, as text) → flushed value (decimal text). */
  flushed: Record<string, string>;
}

/**
 * Completes a read of the counter's unflushed deltas (`redisReply`: counter-deltas.lua's, read
 * atomically by the caller) with its flushed buckets from PostgreSQL in [fromMs, toMs), so that
 * they fit together: undefined when a flush moved deltas between the two reads (read again).
 */
export async function completeUsageRead(
  ctx: EngineContext,
  counter: string,
  granularity: Granularity,
  range: { fromMs: number; toMs: number },
  redisReply: ScriptReply,
): Promise<UsageRead | undefined> {
  const shard = shardOf(counter, ctx.config.shards);
  const keys = shardKeys(ctx.config.keyPrefix, shard);
  const [snapshots, batchId, snapshotMs, pendingTags] = redisReply as [
    number,
    string,
    string,
    number,
  ];
  const { rows } = await ctx.pool
    .query<{
      applied: boolean;
      buckets: Record<string, string>;
      pruned_before_ms: string | null;
    }>({
      ...usageSql.flushedBuckets,
      values: [
        shard,
        batchId,
        counter,
        granularity,
        range.fromMs,
        range.toMs,
        snapshotMs,
        ledgerClockMarginMs,
      ],
    })
    .catch((error: unknown) => {
      throw postgresFailure(error, 'a usage read');
    });
  // Deltas moved from pending to in-flight (a snapshot) while PostgreSQL was read would be
  // counted twice or not at all: read again.
  const snapshotsAfter = Number(
    (await ctx.redis.get(keys.snapshots).catch((error: unknown) => {
      throw redisFailure(error, 'read', 'a usage read');
    })) ?? 0,
  );
  if (snapshotsAfter !== snapshots) return undefined;
  const prunedBefore = rows[0]?.pruned_before_ms;
  checkNotPruned(
    granularity,
    range.fromMs,
    prunedBefore == null ? undefined : Number(prunedBefore),
  );

  // Exact sums: deltas are 64-bit, and doubles that are each off could add up to a wrong
  // value that looks safe.
  const unflushed = new Map<number, bigint>();
  // Pairs of (bucket tag, delta): the pending ones, then the in-flight ones unless applied.
  const pairsEnd = rows[0]?.applied === true ? 4 + 2 * pendingTags : redisReply.length;
  for (let i = 4; i < pairsEnd; i += 2) {
    const tagged = tagBuckets(String(redisReply[i]));
    const start = tagged.starts[tagged.granularities.indexOf(granularity)];
    if (start === undefined) continue;
    unflushed.set(start, (unflushed.get(start) ?? 0n) + BigInt(String(redisReply[i + 1])));
  }
  return { unflushed, flushed: rows[0]?.buckets ?? {} };
}

/** One consistent read of the counter's buckets in [fromMs, toMs). */
async function readOnce(
  ctx: EngineContext,
  counter: string,
  granularity: Granularity,
  range: { fromMs: number; toMs: number },
): Promise<UsageRead | undefined> {
  const keys = shardKeys(ctx.config.keyPrefix, shardOf(counter, ctx.config.shards));
  const redisReply = await ctx.scripts.readBuckets(keys, counter).catch((error: unknown) => {
    throw redisFailure(error, 'read', 'a usage read');
  });
  return completeUsageRead(ctx, counter, granularity, range, redisReply);
}

/**
 * Usage of one counter per bucket, exact over flushed and not-yet-flushed deltas: PostgreSQL's
 * buckets + pending bucket deltas + in-flight bucket deltas not yet in the ledger.
 */
export async function readUsage(
  ctx: EngineContext,
  ref: CounterRef,
  query: UsageQuery,
): Promise<UsageBucket[]> {
  const counter = canonicalName(ref);
  const { starts, toMs } = periodStarts(ctx, query);
  for (let attempt = 0; attempt < maxReadAttempts; attempt++) {
    const read = await readOnce(ctx, counter, query.granularity, {
      fromMs: starts[0] ?? toMs,
      toMs,
    });
    if (read === undefined) continue;
    return starts.map((start) => {
      const exact = BigInt(read.flushed[String(start)] ?? '0') + (read.unflushed.get(start) ?? 0n);
      const value = Number(exact);
      if (!Number.isSafeInteger(value)) {
        throw new TallyError(
          'OVERFLOW',
          `Usage of ${counter} in the bucket at ${new Date(start).toISOString()} is past ` +
            '±(2^53−1) and cannot be returned exactly.',
        );
      }
      return { start: new Date(start), value };
    });
  }
  throw new TallyError(
    'UNAVAILABLE',
    `Usage of ${counter} kept changing under ${maxReadAttempts} reads (flushes running back to back).`,
  );
}
