import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Granularity } from '../counters/buckets.js';
import type { QuotaPeriod } from '../counters/quota-periods.js';
import { shardOf } from '../counters/sharding.js';
import { TallyError } from '../errors.js';
import { redisFailure } from '../redis/connection.js';
import { ScriptStatus } from '../redis/scripts.js';
import { fieldSeparator, shardKeys } from '../redis/shard-keys.js';
import type { EngineContext } from './engine-context.js';
import { completeUsageRead, maxReadAttempts } from './usage.js';

/*
 * Seeds a counter's usage in a quota period, the whole of it, so that a hard limit sees
 * PostgreSQL's part as well as Redis' (docs/design.md, "Periodic quotas"):
 *
 * 1. begin-quota-seed.lua installs an accumulator (usage 0 and a marker with this seeder's
 *    nonce); from then on every increment of the counter in the period adds to it. In the same
 *    atomic step it reads the counter's pending and in-flight deltas, with the snapshot count.
 * 2. PostgreSQL's flushed buckets of the period are read as a usage read reads them, with the
 *    in-flight batch's verdict (engine/usage.ts).
 * 3. finish-quota-seed.lua adds flushed + unflushed to the accumulator, unless a flush
 *    snapshotted since step 1 or the marker is no longer this seeder's: then it starts over.
 *
 * Increments of the period wait (NEEDS_SEED) until step 3. A seeder that died leaves its marker;
 * another process takes it over after `seedTakeoverMs` of Redis' clock.
 */

/** How old another process's seed marker must be before it is taken over. */
export const seedTakeoverMs = 2_000;
/**
 * The most quota periods one counter lists at once (kinds of period: per, zone, anchor; and
 * the recent ones late increments still reach): every increment of the counter walks its list
 * in Redis, so a client inventing periods must not grow it. When full, the period that ends
 * first is dropped, and seeds again if asked for.
 */
export const maxPeriodsPerCounter = 16;
/** The wait before asking again while another process seeds the same period. */
const busyRetryMs = 20;

/** The hash field of a counter's usage in a period (shard-keys.ts, quotaUsage). */
export const quotaUsageField = (period: QuotaPeriod, counter: string) =>
  `${period.startMs},${period.endMs}${fieldSeparator}${counter}`;

/**
 * Drops a shard's quota usages (a repair found Redis wrong, or a refused batch's fate changed
 * what PostgreSQL holds): each period seeds again when an increment next needs it, and a seed
 * under way loses its marker and starts over.
 */
export async function dropQuotaUsage(ctx: EngineContext, shard: number): Promise<void> {
  const keys = shardKeys(ctx.config.keyPrefix, shard);
  await ctx.redis
    .del(keys.quotaUsage, keys.quotaPeriods, keys.quotaSeeding)
    .catch((error: unknown) => {
      throw redisFailure(error, 'write', `dropping the quota usages of shard ${shard}`);
    });
}

export class QuotaSeeder {
  /** In one process, seeds of one period share a promise. */
  private readonly seeds = new Map<string, Promise<void>>();

  constructor(
    private readonly ctx: EngineContext,
    /** Rebuilds a shard whose totals lack the PostgreSQL base; see Tally.rebuildShard. */
    private readonly rebuildShard: (shard: number) => Promise<void>,
  ) {}

  /** Resolves once the counter's usage in the period is whole; throws past `deadline`. */
  seed(
    counter: string,
    period: QuotaPeriod,
    granularity: Granularity,
    deadline: number,
  ): Promise<void> {
    const field = quotaUsageField(period, counter);
    let seeding = this.seeds.get(field);
    if (seeding === undefined) {
      seeding = this.run(counter, period, granularity, field, deadline).finally(() =>
        this.seeds.delete(field),
      );
      this.seeds.set(field, seeding);
    }
    return seeding;
  }

  private async run(
    counter: string,
    period: QuotaPeriod,
    granularity: Granularity,
    field: string,
    deadline: number,
  ): Promise<void> {
    const shard = shardOf(counter, this.ctx.config.shards);
    const keys = shardKeys(this.ctx.config.keyPrefix, shard);
    const nonce = randomUUID();
    const periodArg = `${period.startMs},${period.endMs}`;
    let reads = 0;
    while (Date.now() < deadline) {
      const begun = await this.ctx.scripts
        .beginQuotaSeed(keys, {
          counter,
          period: periodArg,
          nonce,
          takeoverMs: seedTakeoverMs,
          maxPeriods: maxPeriodsPerCounter,
        })
        .catch((error: unknown) => {
          throw redisFailure(error, 'write', 'a quota seed');
        });
      const [status] = begun;
      if (status === ScriptStatus.seeded) return;
      if (status === ScriptStatus.seedBusy) {
        await sleep(busyRetryMs);
        continue;
      }
      if (status === ScriptStatus.needsRebuild) {
        await this.rebuildShard(shard);
        continue;
      }
      const read = await completeUsageRead(
        this.ctx,
        counter,
        granularity,
        { fromMs: period.startMs, toMs: period.endMs },
        begun.slice(1),
      );
      if (read !== undefined) {
        let usage = 0n;
        for (const value of Object.values(read.flushed)) usage += BigInt(value);
        for (const [start, delta] of read.unflushed) {
          if (start >= period.startMs && start < period.endMs) usage += delta;
        }
        const [finished] = await this.ctx.scripts
          .finishQuotaSeed(keys, {
            field,
            nonce,
            snapshots: Number(begun[1]),
            usage: String(usage),
          })
          .catch((error: unknown) => {
            throw redisFailure(error, 'write', 'a quota seed');
          });
        if (finished === ScriptStatus.ok) return;
      }
      // A flush moved deltas under the read, or the marker went: read again, as usage does.
      if (++reads >= maxReadAttempts) break;
    }
    throw new TallyError(
      'UNAVAILABLE',
      `The quota usage of ${counter} from ${new Date(period.startMs).toISOString()} could not ` +
        'be read whole in time (flushes or other seeders kept changing it); this increment was ' +
        'not counted.',
    );
  }
}
