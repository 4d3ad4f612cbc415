import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { ChainableCommander, Cluster, Redis } from 'ioredis';
import { onServerOf } from './replication.js';
import type { ShardKeys } from './shard-keys.js';
import { TallyError } from '../errors.js';

/** A connection Tally's commands run on: one Redis, or a Redis Cluster. */
export type RedisConnection = Redis | Cluster;

/**
 * The codes scripts return, named once: the scripts get them as Lua constants of the same names
 * in upper case (`--- @include "statuses"`: OK, NEEDS_REBUILD, APPLIED, ...).
 */
export const ScriptStatus = {
  ok: 0,
  needsRebuild: 1,
  batchChanged: 2,
  /** begin-quota-seed.lua: another seeder's marker is too young to take over. */
  seedBusy: 3,
  /** begin-quota-seed.lua: the period's usage is whole already. */
  seeded: 4,
  /** delete-counters.lua: the caller no longer holds the shard lock. */
  lostLock: 5,
} as const;

export const IncrementStatus = {
  applied: 1,
  duplicate: 2,
  overLimit: 3,
  overflow: 4,
  keyReused: 5,
  /** The entry's quota period has no whole usage yet: seed it, then send the entry again. */
  needsSeed: 6,
  /** A check (`check: true`) that would apply. */
  allowed: 7,
} as const;

export type ScriptReply = (string | number)[];

// Beside this module in src/ and in dist/ alike (the build copies lua/ into dist/redis/).
const luaDir = new URL('./lua/', import.meta.url);

/** A line that pulls in `lua/includes/<name>.lua`, as BullMQ's scripts write it. */
const includeLine = /^--- @include "([a-z-]+)"$/gm;

const upperSnake = (name: string) => name.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase();

/** Includes made from the TypeScript constants above, so the two never disagree. */
const generatedIncludes: Record<string, string> = {
  statuses: Object.entries({ ...ScriptStatus, ...IncrementStatus })
    .map(([name, code]) => `local ${upperSnake(name)} = ${code}`)
    .join('\n'),
};

/** A script's source with its includes resolved (each at most once per script). */
function resolveIncludes(source: string, included = new Set<string>()): string {
  return source.replace(includeLine, (_, name: string) => {
    if (included.has(name)) return '';
    included.add(name);
    const body =
      generatedIncludes[name] ??
      readFileSync(new URL(`includes/${name}.lua`, luaDir), 'utf8').trimEnd();
    return resolveIncludes(body, included);
  });
}

const files = {
  increment: 'increment.lua',
  readTotals: 'read-totals.lua',
  snapshot: 'snapshot.lua',
  acknowledge: 'acknowledge.lua',
  markRefused: 'mark-refused.lua',
  reconcileChunk: 'reconcile-chunk.lua',
  readBuckets: 'read-buckets.lua',
  beginQuotaSeed: 'begin-quota-seed.lua',
  finishQuotaSeed: 'finish-quota-seed.lua',
  readBatchState: 'read-batch-state.lua',
  deleteCounters: 'delete-counters.lua',
  readUnflushed: 'read-unflushed.lua',
  releaseLock: 'release-lock.lua',
  extendLock: 'extend-lock.lua',
} as const;

export type ScriptName = keyof typeof files;

/**
 * Each script's resolved source, and the command it runs under: its name and the hash of its
 * source, so two Tally versions sharing one Redis never run each other's scripts under one
 * name (ioredis runs them by SHA under these names), and no version number is bumped by hand.
 */
const loaded = Object.fromEntries(
  Object.entries(files).map(([name, file]) => {
    const lua = resolveIncludes(readFileSync(new URL(file, luaDir), 'utf8'));
    const sha = createHash('sha1').update(lua).digest('hex');
    return [name, { lua, sha, command: `tally_${name}_${sha.slice(0, 12)}` }];
  }),
) as Record<ScriptName, { lua: string; sha: string; command: string }>;

/** The command a script runs under on a Tally connection. */
export const scriptCommand = (name: ScriptName) => loaded[name].command;

/** Every script's command. */
export const scriptCommands = (): string[] => Object.values(loaded).map(({ command }) => command);

/** The script's source as Redis runs it, includes resolved (tests read it). */
export const scriptSource = (name: ScriptName) => loaded[name].lua;

/** increment.lua's fixed keys, in order; the call's idempotency keys follow them. */
export const incrementKeys = (keys: ShardKeys): string[] => [
  keys.epoch,
  keys.totals,
  keys.pending,
  keys.pendingTags,
  keys.pendingSince,
  keys.pendingNewCounters,
  keys.quotaUsage,
  keys.quotaPeriods,
  keys.quotaSeeding,
  keys.sequence,
];

/**
 * What a snapshot must reach before it is returned: `replicas` replicas (WAIT) and, with
 * `fsync`, the AOF on disk (WAITAOF), each within `timeoutMs`. Sent in one pipeline with the
 * snapshot, so that they count its write: on another connection (one made anew after a
 * reconnect) they would count nothing and return at once.
 */
export interface SnapshotKeeping {
  replicas: number;
  fsync: boolean;
  timeoutMs: number;
}

export type SnapshotReply =
  { state: 'empty' } | { state: 'created' | 'resumed'; batchId: string; snapshotMs: number };

/**
 * Tally's Lua scripts on a connection, one typed wrapper each: the wrapper builds the KEYS (in
 * the order the script's header lists them, their count is the array's length) and the ARGV.
 */
export interface Scripts {
  /**
   * increment.lua: `keys` are incrementKeys() and then the call's idempotency keys. Its
   * arguments may come in several arrays, sent one after the other (a group's can run to
   * thousands).
   */
  increment(
    keys: readonly string[],
    args: readonly (readonly (string | number)[])[],
  ): Promise<ScriptReply>;
  /**
   * increment.lua calls followed, in one pipeline on one connection, by WAIT for `replicas`:
   * each call's reply (or its error), and how many replicas acknowledged them all (or the
   * WAIT's failure). On a cluster the calls must be for slots of one server.
   */
  incrementsAndWait(
    calls: readonly { keys: readonly string[]; args: readonly (readonly (string | number)[])[] }[],
    wait: { replicas: number; timeoutMs: number },
  ): Promise<{ replies: (ScriptReply | Error)[]; replicas: number | Error }>;
  /** Loads a script on the server of `routeKey` (after a NOSCRIPT reply in a pipeline). */
  loadScriptOn(routeKey: string, name: ScriptName): Promise<void>;
  /** {OK, total...} as decimal strings, or {NEEDS_REBUILD}. */
  readTotals(keys: ShardKeys, counters: readonly string[]): Promise<ScriptReply>;
  /**
   * Flush step 1: freezes pending into the in-flight batch, or resumes the one there. Only
   * the holder of the shard lock (`lockToken`) freezes new deltas.
   */
  snapshot(
    keys: ShardKeys,
    newBatchId: string,
    lockToken: string,
    keep?: SnapshotKeeping,
  ): Promise<SnapshotReply>;
  /**
   * Flush step 3: deletes the in-flight batch if it is still `batchId`; whether it did.
   * `inPostgres` false: an operator discarded it (its new counters become orphans).
   */
  acknowledge(keys: ShardKeys, batchId: string, inPostgres: boolean): Promise<boolean>;
  /** Marks the in-flight batch `batchId` refused (the ledger's horizon, ms). */
  markRefused(keys: ShardKeys, batchId: string, horizonMs: number): Promise<void>;
  /**
   * {OK, counter, redis total, expected...} for the drifted counters, {BATCH_CHANGED}, or
   * {LOST_LOCK} for a repair whose caller no longer holds the shard lock.
   */
  reconcileChunk(
    keys: ShardKeys,
    chunk: {
      batchId: string;
      inflightApplied: boolean;
      repair: boolean;
      lockToken: string;
      pairs: readonly [string, string][];
    },
  ): Promise<ScriptReply>;
  /** {snapshot count, in-flight batch id, its snapshot ms, P, P (tag, delta) pairs, in-flight pairs}. */
  readBuckets(keys: ShardKeys, counter: string): Promise<ScriptReply>;
  /**
   * {OK, then readBuckets' reply}, {SEEDED}, {SEED_BUSY} or {NEEDS_REBUILD}
   * (begin-quota-seed.lua).
   */
  beginQuotaSeed(
    keys: ShardKeys,
    seed: {
      counter: string;
      period: string;
      nonce: string;
      takeoverMs: number;
      maxPeriods: number;
    },
  ): Promise<ScriptReply>;
  /** {OK} or {BATCH_CHANGED} (finish-quota-seed.lua). */
  finishQuotaSeed(
    keys: ShardKeys,
    seed: { field: string; nonce: string; snapshots: number; usage: string },
  ): Promise<ScriptReply>;
  /**
   * {snapshot count, in-flight batch id, its snapshot ms, new counters matching
   * `newCounterPattern`...} (none for '').
   */
  readBatchState(keys: ShardKeys, newCounterPattern: string): Promise<ScriptReply>;
  /** A query's unflushed deltas of one shard, or {BATCH_CHANGED} (read-unflushed.lua). */
  readUnflushed(
    keys: ShardKeys,
    read: {
      snapshots: number;
      batchId: string;
      /** What the query's snapshot says of batch `batchId` ('applied' when none). */
      verdict: 'applied' | 'lacked' | 'refused';
      pattern: string;
      /** The counters to look up besides the new ones; undefined: scan every field. */
      counters: readonly string[] | undefined;
    },
  ): Promise<ScriptReply>;
  /**
   * {OK, in-flight batch id or '', the counters Redis had} or {LOST_LOCK}
   * (delete-counters.lua).
   */
  deleteCounters(
    keys: ShardKeys,
    lockToken: string,
    counters: readonly string[],
  ): Promise<ScriptReply>;
  /** Whether the lock was still `token`'s and is now released. */
  releaseLock(lockKey: string, token: string): Promise<boolean>;
  /** Whether the lock was still `token`'s and now lives `ttlMs` more. */
  extendLock(lockKey: string, token: string, ttlMs: number): Promise<boolean>;
}

/** The keys counter-deltas.lua reads, in its order (read-buckets.lua, begin-quota-seed.lua). */
const readBucketsKeys = (keys: ShardKeys): string[] => [
  keys.pending,
  keys.pendingTags,
  keys.inflight,
  keys.inflightTags,
  keys.inflightMeta,
  keys.snapshots,
];

/**
 * A script by its SHA in a pipeline, as a plain command: ioredis' own script commands re-send a
 * call that met NOSCRIPT outside the pipeline, after the WAIT that was to cover it. Here NOSCRIPT
 * comes back as the call's error (not applied), for the caller to load the script and send the
 * call again.
 */
function evalsha(
  pipeline: ChainableCommander,
  name: ScriptName,
  keys: readonly string[],
  args: readonly (string | number)[],
): void {
  pipeline.call('EVALSHA', loaded[name].sha, keys.length, ...keys, ...args);
}

export function isNoScript(error: unknown): boolean {
  return error instanceof Error && error.message.startsWith('NOSCRIPT');
}

/** Throws UNAVAILABLE unless the snapshot reached what `keep` asks (its WAIT's and WAITAOF's replies). */
function checkKept(
  waited: [Error | null, unknown] | undefined,
  synced: [Error | null, unknown] | undefined,
  keep: SnapshotKeeping,
): void {
  const retry = 'the batch stays in flight and the flush will retry';
  if (waited?.[0]) throw waited[0];
  const replicas = Number(waited?.[1]);
  if (!(replicas >= keep.replicas)) {
    throw new TallyError(
      'UNAVAILABLE',
      `${replicas} of ${keep.replicas} Redis replicas confirmed the flush snapshot within ` +
        `${keep.timeoutMs} ms; ${retry}.`,
    );
  }
  if (!keep.fsync) return;
  if (synced?.[0]) throw synced[0];
  const [local] = (synced?.[1] ?? [0]) as [number];
  if (local < 1) {
    throw new TallyError(
      'UNAVAILABLE',
      `Redis did not fsync the flush snapshot within ${keep.timeoutMs} ms; ${retry}.`,
    );
  }
}

/** ioredis flattens array arguments into one command, so none is spread into a call here. */
type Invoke = (...args: (number | readonly (string | number)[])[]) => Promise<unknown>;

export function defineScripts(redis: RedisConnection): Scripts {
  const commands = {} as Record<ScriptName, Invoke>;
  for (const name of Object.keys(files) as ScriptName[]) {
    const { command, lua } = loaded[name];
    // No numberOfKeys: every call sends its own count, the length of the keys it builds.
    redis.defineCommand(command, { lua });
    commands[name] = (redis as unknown as Record<string, Invoke>)[command]?.bind(redis) as Invoke;
  }
  const loadScriptOn = async (routeKey: string, name: ScriptName) => {
    await onServerOf(redis, routeKey, (pipeline) => {
      pipeline.call('SCRIPT', 'LOAD', loaded[name].lua);
    });
  };
  const run = (
    name: ScriptName,
    keys: readonly string[],
    ...args: (readonly (string | number)[])[]
  ) => commands[name](keys.length, keys, ...args);
  return {
    // The hot path: straight to the command, no wrapper's arrays.
    increment: (keys, args) =>
      commands.increment(keys.length, keys, ...args) as Promise<ScriptReply>,
    async incrementsAndWait(calls, wait) {
      const results = await onServerOf(redis, calls[0]?.keys[0] ?? '', (pipeline) => {
        for (const { keys, args } of calls) evalsha(pipeline, 'increment', keys, args.flat());
        pipeline.call('WAIT', wait.replicas, wait.timeoutMs);
      });
      const replies = calls.map((_, index): ScriptReply | Error => {
        const [error, reply] = results[index] ?? [new Error('the pipeline returned no reply')];
        return error ?? (reply as ScriptReply);
      });
      const [waitError, acknowledged] = results[calls.length] ?? [new Error('no WAIT reply')];
      return { replies, replicas: waitError ?? Number(acknowledged) };
    },
    loadScriptOn,
    readTotals: (keys, counters) =>
      run('readTotals', [keys.epoch, keys.totals], counters) as Promise<ScriptReply>,
    async snapshot(keys, newBatchId, lockToken, keep) {
      const snapshotKeys = [
        keys.pending,
        keys.pendingTags,
        keys.pendingSince,
        keys.inflight,
        keys.inflightTags,
        keys.inflightMeta,
        keys.snapshots,
        keys.pendingNewCounters,
        keys.inflightNewCounters,
        keys.lock,
      ];
      const args = [newBatchId, lockToken];
      let reply: [string, string?, string?];
      if (keep === undefined) {
        reply = (await run('snapshot', snapshotKeys, args)) as typeof reply;
      } else {
        const send = () =>
          onServerOf(redis, keys.inflight, (pipeline) => {
            evalsha(pipeline, 'snapshot', snapshotKeys, args);
            pipeline.call('WAIT', keep.replicas, keep.timeoutMs);
            if (keep.fsync) pipeline.call('WAITAOF', 1, 0, keep.timeoutMs);
          });
        let results = await send();
        if (isNoScript(results[0]?.[0])) {
          await loadScriptOn(keys.inflight, 'snapshot');
          results = await send();
        }
        const [[snapshotError, snapshotReply] = [null, undefined], waited, synced] = results;
        if (snapshotError) throw snapshotError;
        reply = snapshotReply as typeof reply;
        if (reply[0] !== 'empty' && reply[0] !== 'lost-lock') checkKept(waited, synced, keep);
      }
      const [state, batchId, snapshotMs] = reply;
      if (state === 'lost-lock') {
        throw new TallyError(
          'BUSY',
          `Lost shard lock ${keys.lock} (this process was paused past its TTL); nothing was ` +
            'snapshotted.',
        );
      }
      if (state === 'empty' || batchId === undefined) return { state: 'empty' };
      return {
        state: state === 'resumed' ? 'resumed' : 'created',
        batchId,
        snapshotMs: Number(snapshotMs),
      };
    },
    acknowledge: async (keys, batchId, inPostgres) =>
      Number(
        await run(
          'acknowledge',
          [
            keys.inflight,
            keys.inflightTags,
            keys.inflightMeta,
            keys.inflightNewCounters,
            keys.orphanCounters,
          ],
          [batchId, inPostgres ? '1' : '0'],
        ),
      ) === 1,
    async markRefused(keys, batchId, horizonMs) {
      await run('markRefused', [keys.inflightMeta], [batchId, horizonMs]);
    },
    reconcileChunk: (keys, chunk) =>
      run(
        'reconcileChunk',
        [
          keys.totals,
          keys.pending,
          keys.pendingTags,
          keys.inflight,
          keys.inflightTags,
          keys.inflightMeta,
          keys.lock,
        ],
        [
          chunk.batchId,
          chunk.inflightApplied ? '1' : '0',
          chunk.repair ? '1' : '0',
          chunk.lockToken,
        ],
        chunk.pairs.flat(),
      ) as Promise<ScriptReply>,
    readBuckets: (keys, counter) =>
      run('readBuckets', readBucketsKeys(keys), [counter]) as Promise<ScriptReply>,
    beginQuotaSeed: (keys, seed) =>
      run(
        'beginQuotaSeed',
        [
          ...readBucketsKeys(keys),
          keys.epoch,
          keys.quotaUsage,
          keys.quotaPeriods,
          keys.quotaSeeding,
        ],
        [seed.counter, seed.period, seed.nonce, seed.takeoverMs, seed.maxPeriods],
      ) as Promise<ScriptReply>,
    finishQuotaSeed: (keys, seed) =>
      run(
        'finishQuotaSeed',
        [keys.quotaUsage, keys.quotaSeeding, keys.snapshots],
        [seed.field, seed.nonce, seed.snapshots, seed.usage],
      ) as Promise<ScriptReply>,
    readBatchState: (keys, newCounterPattern) =>
      run(
        'readBatchState',
        [
          keys.snapshots,
          keys.inflightMeta,
          keys.pendingNewCounters,
          keys.inflightNewCounters,
          keys.orphanCounters,
        ],
        [newCounterPattern],
      ) as Promise<ScriptReply>,
    readUnflushed: (keys, read) =>
      run(
        'readUnflushed',
        [
          keys.snapshots,
          keys.inflightMeta,
          keys.pending,
          keys.pendingTags,
          keys.pendingNewCounters,
          keys.inflight,
          keys.inflightTags,
          keys.inflightNewCounters,
          keys.orphanCounters,
        ],
        [
          read.snapshots,
          read.batchId,
          read.verdict,
          read.counters === undefined ? 'scan' : 'named',
          read.pattern,
        ],
        read.counters ?? [],
      ) as Promise<ScriptReply>,
    deleteCounters: (keys, lockToken, counters) =>
      run(
        'deleteCounters',
        [
          keys.lock,
          keys.totals,
          keys.pending,
          keys.pendingTags,
          keys.inflight,
          keys.inflightTags,
          keys.inflightMeta,
          keys.pendingNewCounters,
          keys.inflightNewCounters,
          keys.orphanCounters,
          keys.quotaUsage,
          keys.quotaPeriods,
          keys.quotaSeeding,
        ],
        [lockToken],
        counters,
      ) as Promise<ScriptReply>,
    releaseLock: async (lockKey, token) =>
      Number(await run('releaseLock', [lockKey], [token])) === 1,
    extendLock: async (lockKey, token, ttlMs) =>
      Number(await run('extendLock', [lockKey], [token, ttlMs])) === 1,
  };
}
