// The fault suite's checker against its definition, on random histories: the fast checker
// (sorted steps, binary search) must judge every read exactly as the plain scan does.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { checkReads, checkTotals, History } from './faults/history.js';

type Step =
  | { kind: 'invoke'; counter: number; by: number }
  | { kind: 'complete'; which: number; outcome: 'ok' | 'fail' }
  | { kind: 'read'; counter: number; span: number; value: number };

const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({
    kind: fc.constant('invoke' as const),
    counter: fc.nat(2),
    by: fc.integer({ min: 1, max: 5 }),
  }),
  fc.record({
    kind: fc.constant('complete' as const),
    which: fc.nat(),
    outcome: fc.constantFrom('ok' as const, 'fail' as const),
  }),
  fc.record({
    kind: fc.constant('read' as const),
    counter: fc.nat(2),
    span: fc.nat(5),
    value: fc.nat(60),
  }),
);

/** Plays the steps on a scripted clock (several events may share a millisecond). */
function play(steps: Step[]): History {
  let clock = 0;
  const history = new History(() => clock);
  const open: number[] = [];
  for (const [i, s] of steps.entries()) {
    clock = Math.floor(i / 2); // two events a millisecond: ties are exercised
    if (s.kind === 'invoke') open.push(history.invoke('c', `n${s.counter}`, s.by));
    if (s.kind === 'complete' && open.length > 0) {
      const [id] = open.splice(s.which % open.length, 1);
      if (id !== undefined) history.complete(id, s.outcome);
    }
    if (s.kind === 'read') {
      const invokedAt = clock - s.span;
      history.read(`n${s.counter}`, invokedAt, s.value);
    }
  }
  return history;
}

/** The definition, scanned: bounds of each read over every increment. */
function naiveBounds(history: History) {
  return history.reads.map((read) => {
    let lowerBound = 0;
    let upperBound = 0;
    for (let id = 0; id < history.length; id++) {
      const op = history.op(id);
      if (op.counter !== read.counter) continue;
      if (op.outcome === 'ok' && (op.completedAt ?? Infinity) < read.invokedAt) lowerBound += op.by;
      if (op.outcome !== 'fail' && op.invokedAt <= read.completedAt) upperBound += op.by;
    }
    return { read, lowerBound, upperBound };
  });
}

describe('fault checker', () => {
  it('judges every read as the definition does', () => {
    fc.assert(
      fc.property(fc.array(step, { maxLength: 80 }), (steps) => {
        const history = play(steps);
        const expected = naiveBounds(history).filter(
          (b) => b.read.value < b.lowerBound || b.read.value > b.upperBound,
        );
        const actual = checkReads(history);
        const key = (v: { read: { invokedAt: number; counter: string; value: number } }) =>
          `${v.read.counter}@${v.read.invokedAt}=${v.read.value}`;
        expect(actual.map(key).sort()).toEqual(expected.map(key).sort());
        for (const v of actual) {
          const same = expected.find((e) => e.read === v.read);
          expect(v).toEqual(same);
        }
      }),
      { numRuns: 500 },
    );
  });

  it('reports lost and duplicated totals, and lets unknown outcomes explain only an excess', () => {
    let clock = 0;
    const history = new History(() => clock++);
    const a1 = history.invoke('c', 'a', 5);
    const a2 = history.invoke('c', 'a', 3);
    const b1 = history.invoke('c', 'b', 2);
    history.invoke('c', 'b', 4); // never completes: outcome unknown
    const c1 = history.invoke('c', 'c', 7);
    history.complete(a1, 'ok');
    history.complete(a2, 'fail');
    history.complete(b1, 'ok');
    history.complete(c1, 'ok');

    const verdict = checkTotals(
      history,
      new Map([
        ['a', 8], // the failed 3 was applied: duplicated
        ['b', 6], // 2 ok + the unknown 4: fine
        ['c', 6], // one short: lost
      ]),
    );
    expect(verdict.expected).toEqual(
      new Map([
        ['a', 5],
        ['b', 2],
        ['c', 7],
      ]),
    );
    expect(verdict.duplicated).toEqual(new Map([['a', 3]]));
    expect(verdict.lost).toEqual(new Map([['c', 1]]));
    expect(verdict.unknown).toBe(1);
    expect(checkTotals(history, new Map([['b', 1]])).lost.get('b')).toBe(1);
  });

  it('keeps every increment past its growth steps', () => {
    const history = new History(() => 0);
    for (let i = 0; i < 5_000; i++) history.complete(history.invoke(`c${i % 3}`, 'x', 1), 'ok');
    expect(history.length).toBe(5_000);
    expect(history.sums('ok').get('x')).toBe(5_000);
    expect(history.keyOf(4_999)).toBe('c1-4999');
    expect(history.attempts()).toBe(0);
  });
});
