import { readFileSync } from 'node:fs';
import type { Cluster, Redis } from 'ioredis';

/** A connection Tally's commands run on: one Redis, or a Redis Cluster. */
export type RedisConnection = Redis | Cluster;

/** The codes scripts return; named here once, never as bare numbers elsewhere. */
export const ScriptStatus = {
  ok: 0,
  needsRebuild: 1,
  batchChanged: 2,
} as const;

export const IncrementStatus = {
  applied: 1,
  duplicate: 2,
  overLimit: 3,
  overflow: 4,
  keyReused: 5,
} as const;

/**
 * The version is part of every command name, so two Tally versions sharing one Redis never run
 * each other's scripts (ioredis runs them by SHA under these names).
 */
const scriptVersion = 'v2';

const scripts = {
  increment: { file: 'increment.lua', keys: undefined },
  readTotals: { file: 'read-totals.lua', keys: 2 },
  snapshot: { file: 'snapshot.lua', keys: 7 },
  acknowledge: { file: 'acknowledge.lua', keys: 3 },
  markRefused: { file: 'mark-refused.lua', keys: 1 },
  reconcileChunk: { file: 'reconcile-chunk.lua', keys: 6 },
  readBuckets: { file: 'read-buckets.lua', keys: 6 },
  releaseLock: { file: 'release-lock.lua', keys: 1 },
  extendLock: { file: 'extend-lock.lua', keys: 1 },
} as const;

type ScriptName = keyof typeof scripts;

/** The command a script runs under on a Tally connection. */
export const scriptCommand = (name: ScriptName) => `tally_${scriptVersion}_${name}`;
export type ScriptReply = (string | number)[];

/** Runs Tally's Lua scripts on a connection. */
export interface Scripts {
  /** Scripts with a fixed key count. */
  run(
    name: Exclude<ScriptName, 'increment'>,
    keys: readonly string[],
    args: readonly (string | number)[],
  ): Promise<ScriptReply>;
  /**
   * increment.lua, whose key count varies with the idempotency keys it carries. Its arguments
   * may come in several arrays, sent one after the other (a group's can run to thousands).
   */
  increment(
    keys: readonly string[],
    args: readonly (readonly (string | number)[])[],
  ): Promise<ScriptReply>;
}

// Beside this module in src/ and in dist/ alike (the build copies lua/ into dist/redis/).
const luaDir = new URL('./lua/', import.meta.url);

/** ioredis flattens array arguments into one command, so none is spread into a call here. */
type Invoke = (...args: (number | readonly (string | number)[])[]) => Promise<ScriptReply>;

export function defineScripts(redis: RedisConnection): Scripts {
  for (const [name, script] of Object.entries(scripts)) {
    redis.defineCommand(scriptCommand(name as ScriptName), {
      lua: readFileSync(new URL(script.file, luaDir), 'utf8'),
      ...(script.keys === undefined ? {} : { numberOfKeys: script.keys }),
    });
  }
  const command = (name: ScriptName) =>
    (redis as unknown as Record<string, Invoke>)[scriptCommand(name)]?.bind(redis) as Invoke;
  const commands = Object.fromEntries(
    Object.keys(scripts).map((name) => [name, command(name as ScriptName)]),
  ) as Record<ScriptName, Invoke>;
  return {
    run: (name, keys, args) => commands[name](keys, args),
    increment: (keys, args) => commands.increment(keys.length, keys, ...args),
  };
}
