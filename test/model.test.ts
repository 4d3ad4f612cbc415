/**
 * Model-based tests (fast-check): random interleavings of increments, flushes, flushing
 * processes killed at every crash point, and restarts of Redis and PostgreSQL, checked against
 * a model that holds what was acknowledged.
 */
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTally, migrate, type Tally, type TallyOptions } from '../src/index.js';
import type { FaultPoint } from '../src/engine/fault-points.js';
import { runTypeScript } from './support/child-process.js';
import {
  startPostgres,
  startRedis,
  waitFor,
  type PostgresHandle,
  type RedisHandle,
} from './support/index.js';
import { postgresTotals } from './support/tally-store.js';

const flushOnce = new URL('./fixtures/flush-once.ts', import.meta.url);
const counters = ['a', 'b', 'c', 'd'];

interface Model {
  acknowledged: Map<string, number>;
  /** Deltas that a Redis without persistence lost when it was wiped. */
  lost: Map<string, number>;
}

interface Real {
  tally: Tally;
  options: TallyOptions & { keyPrefix: string };
  pool: pg.Pool;
  redis: RedisHandle;
  postgres: PostgresHandle;
}

function add(map: Map<string, number>, key: string, by: number): void {
  map.set(key, (map.get(key) ?? 0) + by);
}

/** Waits until Redis answers through the client again (reads are safe to retry). */
async function redisBack(tally: Tally): Promise<void> {
  await waitFor('Redis to answer again', () => tally.get('a'));
}

class Increment implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly counter: string,
    readonly by: number,
    readonly idempotencyKey: string | undefined,
    readonly retries: number,
  ) {}
  check = () => true;
  async run(model: Model, real: Real) {
    const options =
      this.idempotencyKey === undefined ? {} : { idempotencyKey: this.idempotencyKey };
    const first = await real.tally.incr(this.counter, this.by, options);
    expect(first.status).toBe('applied');
    add(model.acknowledged, this.counter, this.by);
    for (let i = 0; i < this.retries; i++) {
      // A client retrying the same request: counted once.
      expect((await real.tally.incr(this.counter, this.by, options)).status).toBe('duplicate');
    }
  }
  toString = () =>
    `incr(${this.counter}, ${this.by}${this.idempotencyKey === undefined ? '' : `, key×${this.retries + 1}`})`;
}

class Flush implements fc.AsyncCommand<Model, Real> {
  check = () => true;
  async run(_model: Model, real: Real) {
    // May fail right after a PostgreSQL restart (connections that died with it): the batch
    // stays in flight for the next flush.
    await real.tally.flush().catch((error: unknown) => {
      expect(error).toMatchObject({ code: 'UNAVAILABLE' });
    });
  }
  toString = () => 'flush';
}

class KillFlushingProcess implements fc.AsyncCommand<Model, Real> {
  constructor(readonly point: FaultPoint) {}
  check = () => true;
  async run(_model: Model, real: Real) {
    const child = await runTypeScript(flushOnce, [JSON.stringify(real.options)], {
      TALLY_FAULT_POINT: this.point,
    });
    // Nothing pending means the flush never reaches points past the snapshot.
    expect(child.signal === 'SIGKILL' || child.code === 0).toBe(true);
  }
  toString = () => `kill -9 flush at ${this.point}`;
}

class RestartRedis implements fc.AsyncCommand<Model, Real> {
  check = () => true;
  async run(_model: Model, real: Real) {
    await real.redis.kill('SIGKILL');
    await real.redis.restart();
    await redisBack(real.tally);
  }
  toString = () => 'kill -9 redis + restart (AOF always)';
}

class RestartPostgres implements fc.AsyncCommand<Model, Real> {
  check = () => true;
  async run(_model: Model, real: Real) {
    await real.postgres.stop('immediate');
    await real.postgres.start();
  }
  toString = () => 'postgres immediate stop + start';
}

class WipeRedis implements fc.AsyncCommand<Model, Real> {
  check = () => true;
  async run(model: Model, real: Real) {
    const flushed = await postgresTotals(real.pool);
    // What Redis held and PostgreSQL did not: acknowledged, less flushed, less already lost.
    for (const [counter, acknowledged] of model.acknowledged) {
      const pending = acknowledged - (flushed.get(counter) ?? 0) - (model.lost.get(counter) ?? 0);
      add(model.lost, counter, pending);
    }
    await real.redis.wipe();
    await redisBack(real.tally).catch(() => undefined);
    // Reconcile reports the loss before anything rebuilt the shards it checks.
    const reports = await real.tally.reconcile();
    expect(reports.some((report) => report.redisLostData)).toBe(true);
  }
  toString = () => 'wipe redis (no persistence)';
}

async function flushUntilDone(tally: Tally): Promise<void> {
  await waitFor('a final flush to succeed', () => tally.flush(), { timeoutMs: 20_000 });
  const status = await tally.status();
  expect(status.shards.every((s) => s.inflightBatch === null && s.pendingDeltas === 0)).toBe(true);
}

function incrementCommand(positiveOnly: boolean) {
  return fc
    .tuple(
      fc.constantFrom(...counters),
      positiveOnly ? fc.integer({ min: 1, max: 9 }) : fc.integer({ min: -5, max: 9 }),
      fc.option(fc.uuid(), { nil: undefined }),
      fc.integer({ min: 0, max: 2 }),
    )
    .map(
      ([counter, by, key, retries]) =>
        new Increment(counter, by, key, key === undefined ? 0 : retries),
    );
}

const faultPoints: FaultPoint[] = [
  'before-snapshot',
  'after-snapshot',
  'mid-transaction',
  'after-commit',
  'during-acknowledge',
];

/** Runs one generated scenario on a fresh store, then flushes everything and checks it. */
async function runScenario(
  redis: RedisHandle,
  postgres: PostgresHandle,
  commands: Iterable<fc.AsyncCommand<Model, Real>>,
  check: (totals: Map<string, number>, model: Model, tally: Tally) => Promise<void>,
): Promise<void> {
  const url = await postgres.createDatabase();
  await migrate(url);
  const options = {
    redis: redis.url,
    postgres: url,
    keyPrefix: `m${randomBytes(4).toString('hex')}`,
    shards: 2,
    // Killed flushing processes never release their lock: let it expire quickly.
    flushLockTtlMs: 500,
  };
  const tally = await createTally(options);
  const pool = new pg.Pool({ connectionString: url });
  pool.on('error', () => undefined); // PostgreSQL restarts end idle connections
  const model: Model = { acknowledged: new Map(), lost: new Map() };
  try {
    await fc.asyncModelRun(
      () => ({ model, real: { tally, options, pool, redis, postgres } }),
      commands,
    );
    await flushUntilDone(tally);
    await check(await postgresTotals(pool), model, tally);
  } finally {
    await tally.close();
    await pool.end();
  }
}

describe('model: AOF Redis, crashes and restarts', () => {
  let redis: RedisHandle;
  let postgres: PostgresHandle;
  beforeAll(async () => {
    redis = await startRedis({ persistence: 'aof-always' });
    postgres = await startPostgres();
  });
  afterAll(async () => {
    await postgres.destroy();
    await redis.stop();
  });

  it('PostgreSQL == Σ acknowledged per counter after a final flush, and get() agrees', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.commands(
          [
            incrementCommand(false),
            incrementCommand(false),
            incrementCommand(false),
            fc.constant(new Flush()),
            fc.constantFrom(...faultPoints).map((point) => new KillFlushingProcess(point)),
            fc.constant(new RestartRedis()),
            fc.constant(new RestartPostgres()),
          ],
          { maxCommands: 14 },
        ),
        (commands) =>
          runScenario(redis, postgres, commands, async (totals, model, tally) => {
            for (const counter of counters) {
              expect(totals.get(counter) ?? 0).toBe(model.acknowledged.get(counter) ?? 0);
            }
            expect(await tally.getMany(counters)).toEqual(
              counters.map((counter) => model.acknowledged.get(counter) ?? 0),
            );
          }),
      ),
      { numRuns: 8 },
    );
  });
});

describe('model: Redis without persistence, wiped', () => {
  let redis: RedisHandle;
  let postgres: PostgresHandle;
  beforeAll(async () => {
    redis = await startRedis({ persistence: 'none' });
    postgres = await startPostgres();
  });
  afterAll(async () => {
    await postgres.destroy();
    await redis.stop();
  });

  it('never duplicates, loses only what was not flushed, and reconcile reports the loss', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.commands(
          [
            incrementCommand(true),
            incrementCommand(true),
            fc.constant(new Flush()),
            fc.constantFrom(...faultPoints).map((point) => new KillFlushingProcess(point)),
            fc.constant(new WipeRedis()),
          ],
          { maxCommands: 14 },
        ),
        (commands) =>
          runScenario(redis, postgres, commands, (totals, model) => {
            for (const counter of counters) {
              const acknowledged = model.acknowledged.get(counter) ?? 0;
              const lost = model.lost.get(counter) ?? 0;
              // Exactly what was acknowledged, less what was pending at each wipe: nothing
              // counted twice, nothing lost beyond the unflushed deltas.
              expect(totals.get(counter) ?? 0).toBe(acknowledged - lost);
            }
            return Promise.resolve();
          }),
      ),
      { numRuns: 8 },
    );
  });
});
