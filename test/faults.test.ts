/**
 * The end-to-end proof: real processes (2 APIs, 2 workers, Redis, PostgreSQL, proxies), a
 * seeded fault schedule, and a Jepsen-style checker. `npm run test:faults` runs it longer.
 */
import { describe, expect, it } from 'vitest';
import { runScenario, type ScenarioResult } from './faults/scenario.js';

const seed = Number(process.env.TALLY_FAULT_SEED ?? Date.now() % 1_000_000);

function summary(result: ScenarioResult): string {
  return JSON.stringify(result, null, 1);
}

describe('fault injection', () => {
  it(`AOF Redis, every kind of fault: nothing lost, nothing duplicated, reads in bounds (seed ${seed})`, async () => {
    const result = await runScenario({
      seed,
      durationMs: 45_000,
      faultEveryMs: 2_000,
      minFaults: 20,
      persistence: 'aof-always',
      clients: 5,
    });
    console.info(summary(result)); // the figures of the run, with its seed
    expect(result.violations, summary(result)).toEqual([]);
    expect(Object.values(result.faults).reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(20);
    expect(result.operations.ok).toBeGreaterThan(100);
    expect(result.reads).toBeGreaterThan(10);
  }, 300_000);

  it(`Redis without persistence wiped mid-run: no duplicates, loss within the unflushed deltas (seed ${seed})`, async () => {
    const result = await runScenario({
      seed,
      durationMs: 30_000,
      faultEveryMs: 3_000,
      persistence: 'none',
      clients: 5,
      batchSize: 5, // through POST /v1/increments
      wipeMidRun: true,
    });
    console.info(summary(result));
    expect(result.violations, summary(result)).toEqual([]);
    expect(result.duplicated).toBe(0);
    expect(result.redisLostDataReported).toBe(true);
  }, 300_000);

  it('catches a deliberately broken flush (in-flight batch deleted before the commit)', async () => {
    const result = await runScenario({
      seed,
      durationMs: 8_000,
      faultEveryMs: 4_000,
      persistence: 'aof-always',
      clients: 5,
      // Every flush forgets its batch before committing, and the worker dies mid-transaction.
      workerEnv: {
        TALLY_TEST_BREAK_FLUSH: 'acknowledge-before-commit',
        TALLY_FAULT_POINT: 'mid-transaction',
      },
    });
    expect(result.lost).toBeGreaterThan(0);
    expect(result.violations.some((v) => v.startsWith('lost'))).toBe(true);
  }, 300_000);
});
