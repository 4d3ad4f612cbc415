import { setTimeout as sleep } from 'node:timers/promises';
import { bucketStart, toEpochMs } from './buckets.js';
import type { ResolvedConfig } from './config.js';
import { redisFailure } from './connections.js';
import { canonicalName, validateName, type CounterRef } from './counter-name.js';
import { OverflowError, TallyError, ValidationError } from './errors.js';
import { IncrementStatus, ScriptStatus, type Scripts } from './redis-scripts.js';
import { shardOf } from './sharding.js';
import { bucketField, fieldSeparator, shardKeys } from './shard-keys.js';

export const maxSafeValue = Number.MAX_SAFE_INTEGER;

export interface IncrementOptions {
  /** A retried increment with the same key (for the same counter) is counted once. */
  idempotencyKey?: string;
  /** When the increment happened, for its time buckets (default: now). */
  at?: Date | number;
  /** Apply only if the new total stays ≤ limit; otherwise change nothing. */
  limit?: number;
}

export type IncrementResult =
  | { status: 'applied'; value: number; duplicate: false }
  /** Counted before under the same idempotency key; nothing changed now. */
  | { status: 'duplicate'; value: number; duplicate: true }
  /** Would have passed the limit; nothing changed. `value` is the current total. */
  | { status: 'over-limit'; value: number; duplicate: false; limit: number };

/**
 * A result of incrMany: as incr's, or an increment refused because it would leave ±(2^53−1)
 * (which incr reports by throwing OverflowError). Nothing changed for that item.
 */
export type BatchIncrementResult =
  IncrementResult | { status: 'overflow'; value: number; duplicate: false };

/** One validated increment, ready to send. */
export interface PreparedIncrement {
  counter: string;
  shard: number;
  delta: number;
  limit: number | undefined;
  idempotencyKey: string | undefined;
  bucketFields: string[];
}

function safeInteger(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
    throw new ValidationError(
      `${what} must be a whole number within ±(2^53−1), got ${String(value)}.`,
    );
  }
  return value;
}

/** Validates one increment; throws ValidationError (and sends nothing) on bad input. */
export function prepareIncrement(
  ref: CounterRef,
  by: unknown,
  options: IncrementOptions,
  config: ResolvedConfig,
): PreparedIncrement {
  const counter = canonicalName(ref);
  const delta = safeInteger(by, 'The increment');
  // Callers from plain JavaScript can pass anything.
  const untyped: unknown = options;
  if (typeof untyped !== 'object' || untyped === null) {
    throw new ValidationError('Increment options must be an object.');
  }
  const limit = options.limit === undefined ? undefined : safeInteger(options.limit, 'limit');
  const idempotencyKey =
    options.idempotencyKey === undefined
      ? undefined
      : validateName(options.idempotencyKey, 'An idempotency key');
  const atMs = options.at === undefined ? Date.now() : toEpochMs(options.at, 'at');
  return {
    counter,
    shard: shardOf(counter, config.shards),
    delta,
    limit,
    idempotencyKey,
    bucketFields: config.buckets.map((granularity) =>
      bucketField(granularity, bucketStart(granularity, atMs), counter),
    ),
  };
}

interface Waiting {
  increment: PreparedIncrement;
  resolve(result: IncrementResult): void;
  reject(error: unknown): void;
}

/** Backoff before each retry of increments whose reply was lost (they carry idempotency keys). */
const lostReplyRetryDelaysMs = [20, 100, 500];

/** One entry of a script call: one increment, or plain increments of one counter merged. */
interface Operation {
  increment: PreparedIncrement;
  members: Waiting[];
}

/**
 * Increments that may be merged share this key: same counter, same buckets, same sign, and no
 * idempotency key or limit (those must be decided one by one). Same sign keeps every
 * intermediate total between the first and the last, so the merged range check is exact.
 */
function mergeKey(increment: PreparedIncrement): string | undefined {
  if (increment.idempotencyKey !== undefined || increment.limit !== undefined) return undefined;
  return [increment.counter, Math.sign(increment.delta), ...increment.bucketFields].join(
    fieldSeparator,
  );
}

/** Turns a group into script entries, merging per counter where `merge` allows. */
function toOperations(group: readonly Waiting[], merge: boolean): Operation[] {
  const operations: Operation[] = [];
  const open = new Map<string, Operation>();
  for (const waiting of group) {
    const key = merge ? mergeKey(waiting.increment) : undefined;
    const operation = key === undefined ? undefined : open.get(key);
    const merged = (operation?.increment.delta ?? 0) + waiting.increment.delta;
    if (operation !== undefined && Number.isSafeInteger(merged)) {
      operation.members.push(waiting);
      operation.increment = { ...operation.increment, delta: merged };
      continue;
    }
    const created = { increment: waiting.increment, members: [waiting] };
    operations.push(created);
    if (key !== undefined) open.set(key, created);
  }
  return operations;
}

/**
 * Sends increments to Redis. With coalescing on, the increments issued in one tick are sent as
 * one script call per shard ("group commit"), plain increments of one counter merged into one
 * entry. Each caller's promise settles only once Redis has applied the call; the script applies
 * entries in order, and each caller gets the total right after its own increment in that order.
 */
export class IncrementSender {
  private readonly queues = new Map<number, Waiting[]>();

  constructor(
    private readonly scripts: Scripts,
    private readonly config: ResolvedConfig,
    /** Rebuilds a shard whose totals lack the PostgreSQL base; see Tally.rebuildShard. */
    private readonly rebuildShard: (shard: number) => Promise<void>,
  ) {}

  send(increment: PreparedIncrement): Promise<IncrementResult> {
    return new Promise((resolve, reject) => {
      const waiting = { increment, resolve, reject };
      if (!this.config.coalesce) {
        void this.sendGroup(increment.shard, [waiting], false);
        return;
      }
      const queue = this.queues.get(increment.shard);
      if (queue !== undefined) {
        queue.push(waiting);
        return;
      }
      this.queues.set(increment.shard, [waiting]);
      process.nextTick(() => {
        const group = this.queues.get(increment.shard) ?? [];
        this.queues.delete(increment.shard);
        void this.sendGroup(increment.shard, group, true);
      });
    });
  }

  /** Settles every promise of the group; never rejects itself. */
  private async sendGroup(shard: number, group: Waiting[], merge: boolean): Promise<void> {
    let pending = group;
    for (let attempt = 0; pending.length > 0; attempt++) {
      const operations = toOperations(pending, merge);
      let reply: (string | number)[];
      try {
        reply = await this.callScript(shard, operations);
      } catch (error) {
        const failure = redisFailure(error, 'write', 'an increment');
        const retryDelayMs = lostReplyRetryDelaysMs[attempt];
        // Only an increment with an idempotency key can be retried after a lost reply without
        // risking a double count.
        const retryable =
          failure.code === 'OUTCOME_UNKNOWN' && retryDelayMs !== undefined
            ? pending.filter((waiting) => waiting.increment.idempotencyKey !== undefined)
            : [];
        for (const waiting of pending) {
          if (!retryable.includes(waiting)) waiting.reject(failure);
        }
        if (retryable.length > 0) await sleep(retryDelayMs);
        pending = retryable;
        continue;
      }
      const decideAlone: Waiting[] = [];
      operations.forEach((operation, index) => {
        const status = reply[2 * index];
        const total = Number(reply[2 * index + 1]);
        const [only] = operation.members;
        if (operation.members.length === 1 && only !== undefined) settle(only, status, total);
        else if (status === IncrementStatus.applied) distribute(operation, total);
        // The merged sum would overflow: which of them fit is decided one by one.
        else decideAlone.push(...operation.members);
      });
      if (decideAlone.length > 0) await this.sendGroup(shard, decideAlone, false);
      return;
    }
  }

  /** One script call; rebuilds the shard once if Redis lost its totals, then calls again. */
  private async callScript(
    shard: number,
    operations: readonly Operation[],
  ): Promise<(string | number)[]> {
    const keys = shardKeys(this.config.keyPrefix, shard);
    const scriptKeys = [
      keys.epoch,
      keys.totals,
      keys.pending,
      keys.pendingBuckets,
      keys.pendingSince,
    ];
    const args: (string | number)[] = [this.config.idempotencyWindowMs, this.config.buckets.length];
    for (const { increment } of operations) {
      let idempotencyIndex = 0;
      if (increment.idempotencyKey !== undefined) {
        scriptKeys.push(keys.idempotency(increment.counter, increment.idempotencyKey));
        idempotencyIndex = scriptKeys.length;
      }
      args.push(
        increment.counter,
        increment.delta,
        increment.limit ?? '',
        idempotencyIndex,
        ...increment.bucketFields,
      );
    }
    for (let rebuilt = false; ; rebuilt = true) {
      const reply = await this.scripts.increment(scriptKeys, args);
      if (reply[0] === ScriptStatus.ok) return reply.slice(1);
      if (rebuilt) {
        throw new TallyError(
          'UNAVAILABLE',
          `Shard ${shard} lost its totals again while rebuilding.`,
        );
      }
      await this.rebuildShard(shard);
    }
  }
}

/** Gives each member of an applied merged entry the total right after its own increment. */
function distribute(operation: Operation, totalAfter: number): void {
  let running = totalAfter - operation.increment.delta;
  for (const member of operation.members) {
    running += member.increment.delta;
    member.resolve({ status: 'applied', value: running, duplicate: false });
  }
}

function settle(waiting: Waiting, status: unknown, value: number): void {
  const { increment } = waiting;
  switch (status) {
    case IncrementStatus.applied:
      waiting.resolve({ status: 'applied', value, duplicate: false });
      return;
    case IncrementStatus.duplicate:
      waiting.resolve({ status: 'duplicate', value, duplicate: true });
      return;
    case IncrementStatus.overLimit:
      waiting.resolve({
        status: 'over-limit',
        value,
        duplicate: false,
        limit: increment.limit ?? maxSafeValue,
      });
      return;
    case IncrementStatus.overflow:
      waiting.reject(new OverflowError(increment.counter, increment.delta, value));
      return;
    default:
      waiting.reject(new Error(`increment.lua returned unknown status ${String(status)}`));
  }
}
