import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { forEachLimited, sharedFor, SerialQueue } from '../../src/engine/concurrency.js';

describe('SerialQueue', () => {
  it('runs tasks one at a time, in the order handed in, a failure not stopping the next', async () => {
    const turns = new SerialQueue();
    const log: string[] = [];
    let running = 0;
    const task =
      (name: string, fail = false) =>
      async () => {
        running++;
        expect(running).toBe(1);
        await new Promise((resolve) => setTimeout(resolve, 5));
        log.push(name);
        running--;
        if (fail) throw new Error(name);
        return name;
      };
    const results = await Promise.allSettled([
      turns.run(task('a')),
      turns.run(task('b', true)),
      turns.run(task('c')),
    ]);
    expect(log).toEqual(['a', 'b', 'c']);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
  });
});

describe('forEachLimited', () => {
  it('keeps at most `limit` under way, and reports a failure once those under way are done', async () => {
    let running = 0;
    let most = 0;
    const done: number[] = [];
    const failure = forEachLimited([0, 1, 2, 3, 4, 5, 6, 7], 3, async (item) => {
      running++;
      most = Math.max(most, running);
      // Item 1 fails early; items 0 and 2, already under way, take longer.
      await new Promise((resolve) => setTimeout(resolve, item === 1 ? 1 : 20));
      running--;
      if (item === 1) throw new Error('item 1');
      done.push(item);
    });
    await expect(failure).rejects.toThrow('item 1');
    expect(running).toBe(0);
    expect(most).toBe(3);
    // Nothing after the failure was handed out, and what was under way finished.
    expect(done.sort()).toEqual([0, 2]);
  });
});

describe('sharedFor', () => {
  it('starts one computation per window, whatever the number of callers', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    onTestFinished(() => {
      vi.useRealTimers();
    });
    let started = 0;
    const shared = sharedFor(200, () => Promise.resolve(++started));
    expect(await Promise.all([shared(), shared(), shared()])).toEqual([1, 1, 1]);
    expect(await shared()).toBe(1);
    // The clock moves past the window (a fake clock: no test waits for real time).
    vi.setSystemTime(Date.now() + 250);
    expect(await shared()).toBe(2);
  });
});
