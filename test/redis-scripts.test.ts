/**
 * The Lua scripts as Redis gets them: includes resolved once each, status codes from the
 * TypeScript constants, command names that follow the source.
 */
import { readdir, readFile } from 'node:fs/promises';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  defineScripts,
  IncrementStatus,
  scriptCommand,
  scriptSource,
  ScriptStatus,
} from '../src/redis/scripts.js';
import { shardKeys } from '../src/redis/shard-keys.js';
import { startRedis, type RedisHandle } from './support/index.js';

const luaDir = new URL('../src/redis/lua/', import.meta.url);
const names = [
  'increment',
  'readTotals',
  'snapshot',
  'acknowledge',
  'markRefused',
  'reconcileChunk',
  'readBuckets',
  'beginQuotaSeed',
  'finishQuotaSeed',
  'readBatchState',
  'deleteCounters',
  'readUnflushed',
  'releaseLock',
  'extendLock',
] as const;

let redis: RedisHandle;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});

describe('the Lua scripts', () => {
  it('are loaded for every file in lua/, with every include resolved, once', async () => {
    const files = (await readdir(luaDir)).filter((file) => file.endsWith('.lua'));
    expect(files).toHaveLength(names.length);
    for (const name of names) {
      const source = scriptSource(name);
      expect(source, name).not.toMatch(/@include/);
      // Each helper defined once, however many includes pull it in.
      const helpers = [...source.matchAll(/^local function (\w+)/gm)].map((match) => match[1]);
      expect(new Set(helpers).size, name).toBe(helpers.length);
    }
    const helpers = await readdir(new URL('includes/', luaDir));
    for (const helper of helpers) {
      const body = await readFile(new URL(`includes/${helper}`, luaDir), 'utf8');
      const [, defined] = /^local function (\w+)/m.exec(body) ?? [];
      // Every helper is used by a script, not left behind.
      expect(
        names.some((name) => scriptSource(name).includes(`${defined ?? '?'}(`)),
        helper,
      ).toBe(true);
    }
  });

  it('get their status codes from the TypeScript constants', async () => {
    const client = new Redis(redis.url);
    try {
      const codes = (await client.eval(
        `${
          scriptSource('increment')
            .match(/^local [A-Z_]+ = \d+$/gm)
            ?.join('\n') ?? ''
        }
         return { OK, NEEDS_REBUILD, BATCH_CHANGED, APPLIED, DUPLICATE, OVER_LIMIT, OVERFLOW, KEY_REUSED }`,
        0,
      )) as number[];
      expect(codes).toEqual([
        ScriptStatus.ok,
        ScriptStatus.needsRebuild,
        ScriptStatus.batchChanged,
        IncrementStatus.applied,
        IncrementStatus.duplicate,
        IncrementStatus.overLimit,
        IncrementStatus.overflow,
        IncrementStatus.keyReused,
      ]);
    } finally {
      client.disconnect();
    }
  });

  it('run under names that carry the hash of their source', () => {
    const commands = names.map(scriptCommand);
    expect(new Set(commands).size).toBe(names.length);
    for (const name of names)
      expect(scriptCommand(name)).toMatch(new RegExp(`^tally_${name}_[0-9a-f]{12}$`));
  });

  it('answer through their wrappers on a real Redis', async () => {
    const client = new Redis(redis.url);
    try {
      const scripts = defineScripts(client);
      await client.set('lock', 'me');
      expect(await scripts.extendLock('lock', 'me', 10_000)).toBe(true);
      expect(await scripts.extendLock('lock', 'someone else', 10_000)).toBe(false);
      expect(await scripts.releaseLock('lock', 'someone else')).toBe(false);
      expect(await scripts.releaseLock('lock', 'me')).toBe(true);
      expect(await client.exists('lock')).toBe(0);
    } finally {
      client.disconnect();
    }
  });

  it('freeze new deltas, remove counters or repair totals only for the holder of the shard lock', async () => {
    const client = new Redis(redis.url);
    try {
      const scripts = defineScripts(client);
      const keys = shardKeys('locked', 0);
      // As increment.lua leaves a counter without buckets: its field under the empty tag.
      await client.hset(keys.pending, 'c', 1);
      await client.sadd(keys.pendingTags, '');
      await client.hset(keys.totals, 'c', 1);
      await client.set(keys.lock, 'holder');
      await expect(scripts.snapshot(keys, 'b1', 'paused')).rejects.toMatchObject({ code: 'BUSY' });
      expect(await scripts.deleteCounters(keys, 'paused', ['c'])).toEqual([ScriptStatus.lostLock]);
      const pairs: [string, string][] = [['c', '5']];
      const repair = { batchId: '', inflightApplied: false, repair: true, pairs };
      expect(await scripts.reconcileChunk(keys, { ...repair, lockToken: 'paused' })).toEqual([
        ScriptStatus.lostLock,
      ]);
      expect([await client.hget(keys.pending, 'c'), await client.hget(keys.totals, 'c')]).toEqual([
        '1',
        '1',
      ]);
      expect(await scripts.snapshot(keys, 'b1', 'holder')).toMatchObject({ state: 'created' });
      expect(await scripts.deleteCounters(keys, 'holder', ['c', 'never'])).toEqual([
        ScriptStatus.ok,
        'b1',
        'c',
      ]);
      expect(await client.hlen(keys.inflight)).toBe(0);
    } finally {
      await client.flushall();
      client.disconnect();
    }
  });
});
