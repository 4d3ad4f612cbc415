import { setTimeout as sleep } from 'node:timers/promises';
import { BucketTags } from '../redis/bucket-tags.js';
import { toEpochMs } from '../counters/buckets.js';
import { formatDuration } from '../counters/durations.js';
import { oldestRetainedMs } from '../counters/retention.js';
import { LimitResolver, type LimitOptions, type PreparedLimit } from '../counters/limits.js';
import type { QuotaSeeder } from './quota-seeding.js';
import type { ResolvedConfig } from '../config.js';
import { inOneWrite, redisFailure } from '../redis/connection.js';
import { ReplicatedIncrements } from './replicated-increments.js';
import { forEachLimited } from './concurrency.js';
import { canonicalName, validateName, type CounterRef } from '../counters/counter-name.js';
import {
  IdempotencyKeyReusedError,
  OverflowError,
  TallyError,
  ValidationError,
} from '../errors.js';
import {
  IncrementStatus,
  incrementKeys,
  ScriptStatus,
  type RedisConnection,
  type ScriptReply,
  type Scripts,
} from '../redis/scripts.js';
import { shardOf } from '../counters/sharding.js';
import { shardKeys, type ShardKeys } from '../redis/shard-keys.js';

export const maxSafeValue = Number.MAX_SAFE_INTEGER;

export interface IncrementOptions {
  /** A retried increment with the same key (for the same counter) is counted once. */
  idempotencyKey?: string;
  /** When the increment happened, for its time buckets (default: now). */
  at?: Date | number;
  /**
   * A number: apply only if the new total stays ≤ limit; otherwise change nothing. An object:
   * the same on the total (`{ max }`), or on the usage of a period of a zone's calendar
   * (`{ max, per: 'month', timeZone, anchorDay }`), 'hard' (refuse) or 'soft' (apply, report).
   */
  limit?: number | LimitOptions;
  /** Decide only: 'allowed' or 'over-limit' for this increment, and count nothing. */
  check?: boolean;
}

/**
 * What a limited increment's result carries besides its status: the usage the limit is on
 * (the total, or the period's usage) after the increment (before it, if it was not applied).
 */
export interface LimitState {
  limit: number;
  usage: number;
  /** What is left until the limit, 0 when none (never negative). */
  remaining: number;
  /** When the usage's period began; null for a cap on the total. */
  periodStart: Date | null;
  /** When the period ends and the usage starts from 0 again; null for a cap on the total. */
  resetAt: Date | null;
  /** The usage is past the limit (only a soft limit lets increments take it there). */
  limitExceeded: boolean;
}

type Limited = Partial<LimitState>;

export type IncrementResult =
  | ({ status: 'applied'; value: number; duplicate: false } & Limited)
  /** Counted before under the same idempotency key; nothing changed now. */
  | ({ status: 'duplicate'; value: number; duplicate: true } & Limited)
  /** A check (`check: true`) that would apply; nothing changed. */
  | ({ status: 'allowed'; value: number; duplicate: false } & Limited)
  /** Would have passed the limit; nothing changed. `value` is the current total. */
  | ({ status: 'over-limit'; value: number; duplicate: false } & LimitState);

/**
 * A result of incrMany: as incr's, or an increment refused because it would leave ±(2^53−1)
 * or reused an idempotency key (which incr reports by throwing OverflowError or
 * IdempotencyKeyReusedError). Nothing changed for that item.
 */
export type BatchIncrementResult =
  | IncrementResult
  | { status: 'overflow'; value: number; duplicate: false }
  /** The idempotency key was counted with other parameters; nothing changed (the first stands). */
  | { status: 'key-reused'; value: number; duplicate: false };

/** One validated increment, ready to send. */
export interface PreparedIncrement {
  counter: string;
  shard: number;
  delta: number;
  limit: PreparedLimit | undefined;
  /** Decide only, count nothing. */
  check: boolean;
  idempotencyKey: string | undefined;
  /**
   * With an idempotency key: the parameters it is kept with, so that a retry is told from the
   * same key reused for another increment. `at` counts only when given: a retry without it,
   * an hour later, is still the same increment.
   */
  fingerprint: string | undefined;
  /** The bucket tag of its instant (bucket-tags.ts). */
  bucketTag: string;
}

function safeInteger(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
    throw new ValidationError(
      `${what} must be a whole number within ±(2^53−1), got ${String(value)}.`,
    );
  }
  return value;
}

/**
 * Validates increments (throwing ValidationError, and sending nothing, on bad input) and routes
 * them. Names are validated and hashed every time: for names of API-metering length that costs
 * about 150 ns, while looking a name up in a map of 100,000 remembered ones cost 300–550 ns
 * (a fresh string is hashed anyway, then the lookup misses the CPU caches); such a cache was
 * tried and removed.
 */
export class IncrementPreparer {
  private readonly bucketTags: BucketTags;
  private readonly limits: LimitResolver;

  constructor(private readonly config: ResolvedConfig) {
    this.bucketTags = new BucketTags(config.buckets);
    this.limits = new LimitResolver(config.buckets, config.retention);
  }

  /**
   * An increment's `at`, inside the accepted window (maxBackdateMs before now, maxFutureMs
   * after): usage of a period already billed must not change, and one increment dated 9999
   * must not make a bucket row nobody asked for. Nor may it fall before the retention of a
   * kept granularity: its bucket would be pruned, or written back after the pruning.
   */
  private checkedAt(at: Date | number): number {
    const atMs = toEpochMs(at, 'at');
    const nowMs = Date.now();
    const { maxBackdateMs, maxFutureMs, retention, buckets } = this.config;
    const retained = oldestRetainedMs(retention, buckets, nowMs);
    if (retained !== undefined && atMs < retained.atMs && atMs >= nowMs - maxBackdateMs) {
      throw new ValidationError(
        `at ${new Date(atMs).toISOString()} is older than the ${retained.granularity} buckets ` +
          `are kept (${formatDuration(nowMs - retained.atMs)}: option retention, TALLY_RETENTION).`,
      );
    }
    if (atMs < nowMs - maxBackdateMs || atMs > nowMs + maxFutureMs) {
      throw new ValidationError(
        `at ${new Date(atMs).toISOString()} is outside the accepted window: from ` +
          `${formatDuration(maxBackdateMs)} before now to ${formatDuration(maxFutureMs)} after ` +
          '(options maxBackdateMs, maxFutureMs; TALLY_MAX_BACKDATE_MS, TALLY_MAX_FUTURE_MS).',
      );
    }
    return atMs;
  }

  prepare(ref: CounterRef, by: unknown, options: IncrementOptions): PreparedIncrement {
    const counter = canonicalName(ref);
    const delta = safeInteger(by, 'The increment');
    // Callers from plain JavaScript can pass anything.
    const untyped: unknown = options;
    if (typeof untyped !== 'object' || untyped === null) {
      throw new ValidationError('Increment options must be an object.');
    }
    const check = options.check ?? false;
    if (typeof check !== 'boolean') throw new ValidationError('check must be true or false.');
    const idempotencyKey =
      options.idempotencyKey === undefined
        ? undefined
        : validateName(options.idempotencyKey, 'An idempotency key');
    const atMs = options.at === undefined ? undefined : this.checkedAt(options.at);
    const nowMs = Date.now();
    const limit =
      options.limit === undefined
        ? undefined
        : this.limits.resolve(options.limit, atMs ?? nowMs, nowMs);
    return {
      counter,
      shard: shardOf(counter, this.config.shards),
      delta,
      limit,
      check,
      idempotencyKey,
      fingerprint:
        idempotencyKey === undefined ? undefined : `${delta}|${limit?.key ?? ''}|${atMs ?? ''}`,
      bucketTag: atMs === undefined ? this.bucketTags.now(nowMs) : this.bucketTags.at(atMs),
    };
  }
}

/** An increment waiting for Redis, and where its outcome goes. */
interface Waiting {
  readonly increment: PreparedIncrement;
  resolve(result: IncrementResult): void;
  reject(error: unknown): void;
}

/** One incr call waiting for Redis: its increment and its promise's settlers. */
class Caller implements Waiting {
  resolve: (result: IncrementResult) => void = settlerPlaceholder;
  reject: (error: unknown) => void = settlerPlaceholder;

  constructor(readonly increment: PreparedIncrement) {}
}

function settlerPlaceholder(): void {
  throw new Error('a Caller was settled before its promise existed');
}

/**
 * The Caller whose promise is being made. A promise's executor runs synchronously inside its
 * constructor, so one shared executor can hand the settlers over without a closure per call
 * (at a million increments a second, each allocation shows in the GC's share).
 */
let capturing: Caller | undefined;

function captureSettlers(
  resolve: (result: IncrementResult) => void,
  reject: (error: unknown) => void,
): void {
  if (capturing === undefined) throw new Error('no Caller to capture settlers for');
  capturing.resolve = resolve;
  capturing.reject = reject;
  capturing = undefined;
}

/**
 * The outcomes of one incrMany call, gathered into one promise: a batch of a hundred items
 * then costs one promise, not a hundred (in the HTTP batch profile the per-item promises and
 * their garbage were the largest item after JSON parsing).
 */
class Batch {
  readonly results: BatchIncrementResult[];
  private left: number;
  readonly promise: Promise<BatchIncrementResult[]>;
  private resolveAll!: (results: BatchIncrementResult[]) => void;
  private rejectAll!: (error: unknown) => void;

  constructor(size: number) {
    this.results = new Array<BatchIncrementResult>(size);
    this.left = size;
    this.promise = new Promise((resolve, reject) => {
      this.resolveAll = resolve;
      this.rejectAll = reject;
    });
    if (size === 0) this.resolveAll(this.results);
  }

  settle(index: number, result: BatchIncrementResult): void {
    this.results[index] = result;
    if (--this.left === 0) this.resolveAll(this.results);
  }

  /** The first failure fails the batch, as Promise.all would; later outcomes are ignored. */
  fail(error: unknown): void {
    this.left = -1;
    this.rejectAll(error);
  }
}

/** One item of a Batch: its outcome goes into the batch's slot, with no promise of its own. */
class BatchSlot implements Waiting {
  constructor(
    readonly increment: PreparedIncrement,
    private readonly batch: Batch,
    private readonly index: number,
  ) {}

  resolve(result: IncrementResult): void {
    this.batch.settle(this.index, result);
  }

  reject(error: unknown): void {
    // incrMany reports an increment refused by the script as a result, not an error.
    if (error instanceof OverflowError) {
      this.batch.settle(this.index, { status: 'overflow', value: error.value, duplicate: false });
    } else if (error instanceof IdempotencyKeyReusedError) {
      this.batch.settle(this.index, { status: 'key-reused', value: error.value, duplicate: false });
    } else this.batch.fail(error);
  }
}

/**
 * Seeds of one call's entries at once (each a PostgreSQL read): a batch of a thousand new
 * periods must not take the pool's every connection.
 */
const seedConcurrency = 8;
/**
 * Times an entry is seeded and sent again before it fails: another seed can void one (a
 * repair, or the period dropped from a full list), but not forever.
 */
const maxSeedRounds = 3;

/** Backoff before each retry of increments whose reply was lost (they carry idempotency keys). */
const lostReplyRetryDelaysMs = [20, 100, 500];

/**
 * At most this many entries go into one script call: a bigger group is split into calls sent
 * back to back. It bounds how long one call holds Redis and how big one command gets.
 */
const maxEntriesPerCall = 1_000;

/** One entry of a script call: one increment, or plain increments of one counter merged. */
interface Operation {
  /** The first member's increment; `delta` below is the entry's, summed over the members. */
  increment: PreparedIncrement;
  delta: number;
  members: Waiting[];
}

const singleEntry = (waiting: Waiting): Operation => ({
  increment: waiting.increment,
  delta: waiting.increment.delta,
  members: [waiting],
});

/** An increment without an idempotency key, a limit or a check: it may be merged with others. */
const isMergeable = (increment: PreparedIncrement) =>
  increment.idempotencyKey === undefined && increment.limit === undefined && !increment.check;

/**
 * Turns a group into script entries, merging plain increments of one counter that share their
 * buckets and sign. Same sign keeps every intermediate total between the first and the last,
 * so the merged range check is exact.
 */
function toOperations(group: readonly Waiting[]): Operation[] {
  const operations: Operation[] = [];
  // Per counter, the entry its next plain increment may join: the latest one. (An increment
  // that cannot join it starts a new entry, which becomes the one to join.)
  const mergeTargets = new Map<string, Operation>();
  for (const waiting of group) {
    const { increment } = waiting;
    if (!isMergeable(increment)) {
      operations.push(singleEntry(waiting));
      continue;
    }
    const operation = mergeTargets.get(increment.counter);
    if (
      operation !== undefined &&
      operation.increment.bucketTag === increment.bucketTag &&
      operation.delta > 0 === increment.delta > 0 &&
      Number.isSafeInteger(operation.delta + increment.delta)
    ) {
      operation.delta += increment.delta;
      operation.members.push(waiting);
      continue;
    }
    const created = singleEntry(waiting);
    operations.push(created);
    mergeTargets.set(increment.counter, created);
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
  /** Per shard, the increments of this turn; sent together at the end of the turn. */
  private queues = new Map<number, Waiting[]>();
  private readonly keys = new Map<number, { keys: ShardKeys; scriptKeys: readonly string[] }>();
  /** Per shard, the highest sequence a reply carried (increment.lua). */
  private readonly sequences = new Map<number, number>();
  private readonly replicated: ReplicatedIncrements;

  constructor(
    private readonly redis: RedisConnection,
    private readonly scripts: Scripts,
    private readonly config: ResolvedConfig,
    /** Rebuilds a shard whose totals lack the PostgreSQL base; see Tally.rebuildShard. */
    private readonly rebuildShard: (shard: number) => Promise<void>,
    private readonly seeder: QuotaSeeder,
    /** Told when a shard went back in time: at least `callsLost` calls are gone. */
    private readonly onRewind: (shard: number, callsLost: number) => void,
  ) {
    this.replicated = new ReplicatedIncrements(
      redis,
      scripts,
      config.minReplicas,
      config.replicaWaitTimeoutMs,
    );
  }

  /**
   * A shard's sequence only grows, and replies come back in order (one connection per server),
   * so a value at or below one seen before means the shard went back in time: the calls from
   * it up to the one seen had been applied (and acknowledged, unless their reply was lost too) and
   * are gone (a failover to a replica that was
   * behind, an AOF restart that lost its last second).
   */
  private noteSequence(shard: number, reply: ScriptReply): void {
    const sequence = Number(reply[reply.length - 1]);
    if (!(sequence > 0)) return;
    const seen = this.sequences.get(shard);
    this.sequences.set(shard, sequence);
    if (seen !== undefined && sequence <= seen) this.onRewind(shard, seen - sequence + 1);
  }

  send(increment: PreparedIncrement): Promise<IncrementResult> {
    const caller = new Caller(increment);
    capturing = caller;
    const promise = new Promise<IncrementResult>(captureSettlers);
    this.enqueue(caller);
    return promise;
  }

  /** Sends every increment; one result per increment, an overflow reported as a result. */
  sendMany(increments: readonly PreparedIncrement[]): Promise<BatchIncrementResult[]> {
    const batch = new Batch(increments.length);
    increments.forEach((increment, index) => {
      this.enqueue(new BatchSlot(increment, batch, index));
    });
    return batch.promise;
  }

  private enqueue(waiting: Waiting): void {
    const { shard } = waiting.increment;
    if (!this.config.coalesce) {
      void this.sendOperations(shard, [singleEntry(waiting)]);
      return;
    }
    const queue = this.queues.get(shard);
    if (queue !== undefined) {
      queue.push(waiting);
      return;
    }
    // setImmediate, not nextTick: it runs once the event loop has handled every I/O callback
    // of this turn, so the increments of all the HTTP requests read in one turn share a call
    // (with nextTick each request's went alone: 16 tiny calls per request of a batch).
    if (this.queues.size === 0) setImmediate(this.sendQueues);
    this.queues.set(shard, [waiting]);
  }

  /** Sends the turn's queues: a call (or several) per shard, all in one write. */
  private readonly sendQueues = (): void => {
    const queues = this.queues;
    this.queues = new Map();
    inOneWrite(this.redis, () => {
      for (const [shard, queue] of queues) {
        const operations = toOperations(queue);
        for (let start = 0; start < operations.length; start += maxEntriesPerCall) {
          void this.sendOperations(shard, operations.slice(start, start + maxEntriesPerCall));
        }
      }
    });
  };

  /** Settles every promise of the operations' members; never rejects itself. */
  private async sendOperations(
    shard: number,
    operations: Operation[],
    deadline = Date.now() + this.config.incrementTimeoutMs,
    seedRound = 0,
  ): Promise<void> {
    const { redisCommandTimeoutMs } = this.config;
    let pending = operations;
    for (let attempt = 0; pending.length > 0; attempt++) {
      let reply: ScriptReply;
      try {
        reply = await this.callScript(shard, pending);
      } catch (error) {
        const failure = redisFailure(error, 'write', 'an increment');
        const retryDelayMs = lostReplyRetryDelaysMs[attempt];
        // Only an increment with an idempotency key can be retried after a lost reply without
        // risking a double count (such an increment is never merged with others); and only a
        // retry that ends within incrementTimeoutMs however long Redis takes to answer it.
        const retryable =
          failure.code === 'OUTCOME_UNKNOWN' &&
          retryDelayMs !== undefined &&
          Date.now() + retryDelayMs + redisCommandTimeoutMs <= deadline
            ? pending.filter((operation) => operation.increment.idempotencyKey !== undefined)
            : [];
        for (const operation of pending) {
          if (retryable.includes(operation)) continue;
          for (const member of operation.members) member.reject(failure);
        }
        if (retryable.length > 0) await sleep(retryDelayMs);
        pending = retryable;
        continue;
      }
      this.noteSequence(shard, reply);
      const decideAlone: Operation[] = [];
      const needSeed: Operation[] = [];
      // Period usages follow the entries' pairs, one per periodic entry, in order.
      let usageIndex = 1 + 2 * pending.length;
      pending.forEach((operation, index) => {
        const status = reply[1 + 2 * index];
        const total = Number(reply[2 + 2 * index]);
        const usage =
          operation.increment.limit?.period === undefined ? total : Number(reply[usageIndex++]);
        const [only] = operation.members;
        if (status === IncrementStatus.needsSeed) needSeed.push(operation);
        else if (operation.members.length === 1 && only !== undefined)
          settle(only, status, total, usage);
        else if (status === IncrementStatus.applied) distribute(operation, total);
        // The merged sum would overflow: which of them fit is decided one by one.
        else decideAlone.push(...operation.members.map(singleEntry));
      });
      if (decideAlone.length > 0) await this.sendOperations(shard, decideAlone, deadline);
      if (needSeed.length > 0) await this.seedAndSend(shard, needSeed, deadline, seedRound);
      return;
    }
  }

  /**
   * Seeds the quota periods the entries need (their increments were not applied), then sends
   * them again; a seed that fails fails its entries, with nothing counted.
   */
  private async seedAndSend(
    shard: number,
    operations: Operation[],
    deadline: number,
    seedRound: number,
  ): Promise<void> {
    if (seedRound >= maxSeedRounds) {
      const failure = new TallyError(
        'UNAVAILABLE',
        `The quota usage was reset ${maxSeedRounds} times under these increments (repairs, ` +
          'or a counter with more kinds of period than it can list); they were not counted.',
      );
      for (const operation of operations)
        for (const member of operation.members) member.reject(failure);
      return;
    }
    const ready: Operation[] = [];
    await forEachLimited(operations, seedConcurrency, async (operation) => {
      const { counter, limit } = operation.increment;
      try {
        if (limit?.period === undefined || limit.granularity === undefined) {
          throw new Error('increment.lua asked to seed an entry without a quota period');
        }
        await this.seeder.seed(counter, limit.period, limit.granularity, deadline);
        ready.push(operation);
      } catch (error) {
        for (const member of operation.members) member.reject(error);
      }
    });
    if (ready.length > 0) await this.sendOperations(shard, ready, deadline, seedRound + 1);
  }

  /** The shard's keys, and the keys every increment.lua call of the shard starts with. */
  private keysOfShard(shard: number): { keys: ShardKeys; scriptKeys: readonly string[] } {
    let found = this.keys.get(shard);
    if (found === undefined) {
      const keys = shardKeys(this.config.keyPrefix, shard);
      found = { keys, scriptKeys: incrementKeys(keys) };
      this.keys.set(shard, found);
    }
    return found;
  }

  /**
   * One script call; rebuilds the shard once if Redis lost its totals, then calls again.
   * Resolves with the script's reply: OK, then a status and a total per entry.
   */
  private callScript(shard: number, operations: readonly Operation[]): Promise<ScriptReply> {
    const { keys, scriptKeys: shardScriptKeys } = this.keysOfShard(shard);
    // Idempotency keys follow the shard's keys; without any the shared array goes as it is.
    let scriptKeys = shardScriptKeys;
    // The call's table of bucket tags (usually one: now's), then the entries, each naming its
    // tag by number.
    const tags: string[] = [];
    const entries: (string | number)[] = [];
    for (const { increment, delta } of operations) {
      let tagNumber = tags.indexOf(increment.bucketTag) + 1;
      if (tagNumber === 0) tagNumber = tags.push(increment.bucketTag);
      let entrySpec = String(tagNumber);
      if (!isMergeable(increment)) {
        const { limit } = increment;
        let idempotencyIndex = 0;
        if (increment.idempotencyKey !== undefined) {
          const copy =
            scriptKeys === shardScriptKeys ? [...shardScriptKeys] : (scriptKeys as string[]);
          idempotencyIndex = copy.push(
            keys.idempotency(increment.counter, increment.idempotencyKey),
          );
          scriptKeys = copy;
        }
        const flags = `${increment.check ? 'c' : ''}${limit?.mode === 'soft' ? 's' : ''}`;
        const period =
          limit?.period === undefined ? '' : `${limit.period.startMs},${limit.period.endMs}`;
        entrySpec = `${entrySpec}:${idempotencyIndex}:${flags}:${limit?.max ?? ''}:${period}:${increment.fingerprint ?? ''}`;
      }
      entries.push(increment.counter, delta, entrySpec);
    }
    const { idempotencyWindowMs, maxBackdateMs } = this.config;
    const args = [[idempotencyWindowMs, maxBackdateMs, tags.length, ...tags], entries];
    const call = () =>
      this.config.minReplicas === 0
        ? this.scripts.increment(scriptKeys, args)
        : this.replicated.call(scriptKeys, args);
    return call().then(async (reply) => {
      if (reply[0] === ScriptStatus.ok) return reply;
      await this.rebuildShard(shard);
      const again = await call();
      if (again[0] === ScriptStatus.ok) return again;
      throw new TallyError('UNAVAILABLE', `Shard ${shard} lost its totals again while rebuilding.`);
    });
  }
}

/** Gives each member of an applied merged entry the total right after its own increment. */
function distribute(operation: Operation, totalAfter: number): void {
  let running = totalAfter - operation.delta;
  for (const member of operation.members) {
    running += member.increment.delta;
    member.resolve({ status: 'applied', value: running, duplicate: false });
  }
}

/** The limit's state after an entry (before it, if it was not applied). */
function limitState(limit: PreparedLimit, usage: number): LimitState {
  return {
    limit: limit.max,
    usage,
    remaining: Math.max(0, limit.max - usage),
    periodStart: limit.period === undefined ? null : new Date(limit.period.startMs),
    resetAt: limit.period === undefined ? null : new Date(limit.period.endMs),
    limitExceeded: usage > limit.max,
  };
}

function settle(waiting: Waiting, status: unknown, value: number, usage: number): void {
  const { increment } = waiting;
  const { limit } = increment;
  const state = limit === undefined ? undefined : limitState(limit, usage);
  switch (status) {
    case IncrementStatus.applied:
      waiting.resolve({ status: 'applied', value, duplicate: false, ...state });
      return;
    case IncrementStatus.allowed:
      waiting.resolve({ status: 'allowed', value, duplicate: false, ...state });
      return;
    case IncrementStatus.duplicate:
      waiting.resolve({ status: 'duplicate', value, duplicate: true, ...state });
      return;
    case IncrementStatus.overLimit:
      // Only an increment with a limit can pass it.
      if (state === undefined) break;
      waiting.resolve({ status: 'over-limit', value, duplicate: false, ...state });
      return;
    case IncrementStatus.overflow:
      waiting.reject(new OverflowError(increment.counter, increment.delta, value));
      return;
    case IncrementStatus.keyReused:
      waiting.reject(
        new IdempotencyKeyReusedError(increment.counter, increment.idempotencyKey ?? '', value),
      );
      return;
  }
  waiting.reject(new Error(`increment.lua returned unexpected status ${String(status)}`));
}
