import { Redis } from 'ioredis';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import type { Tally } from '../src/index.js';
import { shardKeys } from '../src/redis/shard-keys.js';
import { runTypeScript, startTypeScript } from './support/child-process.js';
import { startRedis, waitFor, type RedisHandle } from './support/index.js';
import { oneShardStore, postgresTotals } from './support/tally-store.js';

const flushOnce = new URL('./fixtures/flush-once.ts', import.meta.url);
const deleteOnce = new URL('./fixtures/delete-once.ts', import.meta.url);

let redis: RedisHandle;
beforeAll(async () => {
  redis = await startRedis({ persistence: 'aof-always' });
});
afterAll(async () => {
  await redis.stop();
});

/** A store on one shard (so a stuck batch holds every counter), and a client of it. */
async function store() {
  const { options, tally, pool } = await oneShardStore(redis.url, 'del', 600);
  const raw = new Redis(redis.url);
  onTestFinished(async () => {
    await tally.close();
    await pool.end();
    await raw.quit();
  });
  return { options, tally, pool, raw, keys: shardKeys(options.keyPrefix, 0) };
}

const day = Date.UTC(2026, 10, 21);

/** Every row PostgreSQL keeps of a counter: total, buckets, labels. */
async function storedRows(pool: pg.Pool, name: string): Promise<number> {
  const { rows } = await pool.query<{ n: string }>(
    `SELECT (SELECT count(*) FROM tally.counters WHERE name = $1)
          + (SELECT count(*) FROM tally.counter_buckets WHERE name = $1)
          + (SELECT count(*) FROM tally.counter_labels WHERE name = $1) AS n`,
    [name],
  );
  return Number(rows[0]?.n);
}

async function deletions(pool: pg.Pool) {
  const { rows } = await pool.query<{
    requested_by: string;
    selector: unknown;
    state: string;
    counters: string;
  }>('SELECT requested_by, selector, state, counters FROM tally.counter_deletions ORDER BY id');
  return rows.map((row) => ({ ...row, counters: Number(row.counters) }));
}

/** Leaves a batch stuck in flight: a flusher killed right after its snapshot. */
async function stuckBatch(options: object) {
  const child = await runTypeScript(flushOnce, [JSON.stringify(options)], {
    TALLY_FAULT_POINT: 'after-snapshot',
  });
  expect(child.signal).toBe('SIGKILL');
}

async function expectGone(tally: Tally, pool: pg.Pool, name: string) {
  expect(await tally.get(name)).toBe(0);
  const [bucket] = await tally.usage(name, { from: day, to: day + 86_400_000, granularity: 'day' });
  expect(bucket?.value).toBe(0);
  expect(await storedRows(pool, name)).toBe(0);
}

/**
 * Finishes the deletion a killed process left: once PostgreSQL has ended that process's
 * session, and with it the session's claim (as the worker's next run would find it).
 */
async function finishedAfterTheKill(tally: Tally): Promise<void> {
  await waitFor('the killed session to release its deletion', async () =>
    (await tally.finishDeletions()) === 1 ? true : undefined,
  );
}

describe('deleting counters', () => {
  it('takes a counter out of PostgreSQL, pending and a stuck in-flight batch, for good', async () => {
    const { options, tally, pool, raw, keys } = await store();
    await tally.incr('gone', 5, { at: day });
    await tally.incr('kept', 7, { at: day });
    await tally.flush();
    await tally.incr('gone', 3, { at: day });
    await tally.incr('kept', 1, { at: day });
    await stuckBatch(options);
    await tally.incr('gone', 2, { at: day, idempotencyKey: 'k1' });
    expect(await raw.hget(keys.inflightMeta, 'batch')).not.toBeNull();

    const result = await tally.delete('gone', { requestedBy: 'test' });
    expect(result).toMatchObject({ counters: 1, names: ['gone'], dryRun: false });
    await expectGone(tally, pool, 'gone');
    // The batch in flight is flushed without it; a retry of an increment counted before is a
    // duplicate, not a new count; a reconcile finds nothing to bring back.
    await tally.flush();
    expect((await tally.incr('gone', 2, { at: day, idempotencyKey: 'k1' })).status).toBe(
      'duplicate',
    );
    expect((await tally.reconcile({ repair: true })).flatMap((report) => report.drift)).toEqual([]);
    await expectGone(tally, pool, 'gone');
    expect(Object.fromEntries(await postgresTotals(pool))).toEqual({ kept: 8 });
    expect(await deletions(pool)).toEqual([
      { requested_by: 'test', selector: { name: 'gone' }, state: 'done', counters: 1 },
    ]);
    // Counted after the deletion: from 0.
    expect((await tally.incr('gone', 4, { at: day })).value).toBe(4);
    await tally.flush();
    expect((await postgresTotals(pool)).get('gone')).toBe(4);
  });

  it("deletes a tenant's counters by label, flushed or not, after a dry run that changes nothing", async () => {
    const { tally, pool } = await store();
    const calls = (tenant: string, route: string) => ({
      name: 'calls',
      labels: { tenant, route },
    });
    await tally.incr(calls('acme', '/a'), 1, { at: day });
    await tally.incr(calls('other', '/a'), 10, { at: day });
    await tally.flush();
    await tally.incr(calls('acme', '/b'), 2, { at: day }); // only in Redis so far
    const target = { counter: 'calls', where: { tenant: 'acme' } };

    const dry = await tally.delete(target, { dryRun: true });
    expect(dry).toEqual({
      deletionId: null,
      counters: 2,
      names: ['calls{route="/a",tenant="acme"}', 'calls{route="/b",tenant="acme"}'],
      dryRun: true,
    });
    expect(await tally.get(calls('acme', '/a'))).toBe(1);
    expect(await deletions(pool)).toEqual([]);

    expect((await tally.delete(target)).counters).toBe(2);
    const month = { from: '2026-11-01', to: '2026-12-01', granularity: 'total' } as const;
    const { rows } = await tally.query({ counter: 'calls', groupBy: ['tenant'], ...month });
    expect(rows.map((row) => [row.labels, row.value])).toEqual([[{ tenant: 'other' }, 10]]);
    await tally.flush();
    expect(Object.fromEntries(await postgresTotals(pool))).toEqual({
      'calls{route="/a",tenant="other"}': 10,
    });
    expect(await deletions(pool)).toMatchObject([
      { requested_by: 'library', selector: { counter: 'calls', where: { tenant: ['acme'] } } },
    ]);
  });

  it('refuses bad targets with a typed error and deletes nothing', async () => {
    const { tally, pool } = await store();
    await tally.incr('x', 1);
    for (const bad of [
      '',
      { prefix: '' },
      { counter: 'a{b}' },
      { counter: 'calls', prefix: 'c' },
      { counter: 'calls', where: { tenant: [] } },
      42,
      null,
    ]) {
      await expect(tally.delete(bad as never), JSON.stringify(bad)).rejects.toMatchObject({
        code: 'VALIDATION',
      });
    }
    await expect(tally.delete('x', { requestedBy: 'a\nb' })).rejects.toMatchObject({
      code: 'VALIDATION',
    });
    expect(await tally.get('x')).toBe(1);
    expect(await deletions(pool)).toEqual([]);
  });

  it('counts an increment racing the deletion either with it (deleted) or after it, never half', async () => {
    const { tally, pool } = await store();
    await tally.incr('race', 1_000, { at: day });
    await tally.flush();
    const racing = Array.from({ length: 400 }, (_, i) =>
      new Promise((resolve) => setTimeout(resolve, i % 40)).then(() =>
        tally.incr('race', 1, { at: day }),
      ),
    );
    await new Promise((resolve) => setTimeout(resolve, 15));
    await tally.delete('race');
    const results = await Promise.all(racing);
    // Before the deletion the totals were past 1,000; after it they start from 1.
    const after = results.filter((result) => result.value <= 400);
    await tally.flush();
    expect(await tally.get('race')).toBe(after.length);
    expect((await postgresTotals(pool)).get('race') ?? 0).toBe(after.length);
    const [bucket] = await tally.usage('race', {
      from: day,
      to: day + 86_400_000,
      granularity: 'day',
    });
    expect(bucket?.value).toBe(after.length);
  });

  it('keeps a deleted counter out of the batch a paused flusher applies after the deletion', async () => {
    const { options, tally, pool, raw, keys } = await store();
    await tally.incr('paused', 6, { at: day });
    await tally.incr('other', 1, { at: day });
    const flusher = startTypeScript(flushOnce, [JSON.stringify(options)], {
      TALLY_FAULT_DELAY: 'before-transaction:4000',
    });
    await waitFor(
      'the paused flusher to freeze its batch',
      async () => ((await raw.hget(keys.inflightMeta, 'batch')) === null ? undefined : true),
      { timeoutMs: 20_000 },
    );
    // Paused holding the batch it read (well within its 4 s at the fault point), its lock runs
    // out; the deletion takes the shard.
    await new Promise((resolve) => setTimeout(resolve, 500));
    flusher.child.kill('SIGSTOP');
    await tally.delete('paused');
    flusher.child.kill('SIGCONT');
    const result = await flusher.done;
    expect(result.code, result.stderr).toBe(0);
    await tally.flush();
    expect(Object.fromEntries(await postgresTotals(pool))).toEqual({ other: 1 });
    await expectGone(tally, pool, 'paused');
  });

  it('is finished by finishDeletions when the deleting process dies between its two steps', async () => {
    const { options, tally, pool } = await store();
    await tally.incr('half', 9, { at: day });
    await tally.flush();
    await tally.incr('half', 1, { at: day });
    const child = await runTypeScript(deleteOnce, [JSON.stringify(options), '"half"'], {
      TALLY_FAULT_POINT: 'delete-after-postgres',
    });
    expect(child.signal).toBe('SIGKILL');
    expect(await deletions(pool)).toMatchObject([
      { state: 'running', requested_by: 'delete-once' },
    ]);
    await finishedAfterTheKill(tally);
    await tally.flush();
    await expectGone(tally, pool, 'half');
    expect(await deletions(pool)).toMatchObject([{ state: 'done', counters: 1 }]);
    expect(await tally.finishDeletions()).toBe(0);
  });

  it('finishes a crashed deletion of a selection, though PostgreSQL no longer lists its counters', async () => {
    const { options, tally, pool } = await store();
    const acme = { name: 'calls', labels: { tenant: 'acme' } };
    await tally.incr(acme, 4, { at: day });
    await tally.flush(); // nothing pending: only PostgreSQL lists it
    const target = JSON.stringify({ counter: 'calls', where: { tenant: 'acme' } });
    const child = await runTypeScript(deleteOnce, [JSON.stringify(options), target], {
      TALLY_FAULT_POINT: 'delete-after-postgres',
    });
    expect(child.signal).toBe('SIGKILL');
    expect(await tally.get(acme)).toBe(4); // Redis still has it
    await finishedAfterTheKill(tally);
    expect(await tally.get(acme)).toBe(0);
    expect(await deletions(pool)).toMatchObject([{ state: 'done', counters: 1 }]);
  });
});
