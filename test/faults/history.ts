/**
 * A Jepsen-style history of counter operations and the checker that judges it. Pure: no I/O.
 *
 * An increment is invoked once and may be attempted many times with the same idempotency key
 * until one attempt's outcome is known; it ends `ok` (counted exactly once), `fail` (known not
 * counted), or stays `info` (unknown) if the run ends first.
 */
export interface IncrementOp {
  id: number;
  client: string;
  counter: string;
  by: number;
  idempotencyKey: string;
  invokedAt: number;
  outcome: 'ok' | 'fail' | 'info';
  completedAt?: number;
  attempts: number;
}

export interface ReadOp {
  counter: string;
  invokedAt: number;
  completedAt: number;
  value: number;
}

export class History {
  readonly increments: IncrementOp[] = [];
  readonly reads: ReadOp[] = [];

  invoke(client: string, counter: string, by: number, idempotencyKey: string): IncrementOp {
    const op: IncrementOp = {
      id: this.increments.length,
      client,
      counter,
      by,
      idempotencyKey,
      invokedAt: Date.now(),
      outcome: 'info',
      attempts: 0,
    };
    this.increments.push(op);
    return op;
  }

  complete(op: IncrementOp, outcome: 'ok' | 'fail'): void {
    op.outcome = outcome;
    op.completedAt = Date.now();
  }

  read(counter: string, invokedAt: number, value: number): void {
    this.reads.push({ counter, invokedAt, completedAt: Date.now(), value });
  }
}

export interface ReadViolation {
  read: ReadOp;
  lowerBound: number;
  upperBound: number;
}

/**
 * Every read must lie between Σ ok increments completed before it began and Σ increments not
 * failed that began before it ended. Returns the violations, worst first.
 */
export function checkReads(history: History): ReadViolation[] {
  const byCounter = new Map<string, IncrementOp[]>();
  for (const op of history.increments) {
    byCounter.set(op.counter, [...(byCounter.get(op.counter) ?? []), op]);
  }
  const violations: ReadViolation[] = [];
  for (const read of history.reads) {
    const ops = byCounter.get(read.counter) ?? [];
    let lowerBound = 0;
    let upperBound = 0;
    for (const op of ops) {
      if (op.outcome === 'ok' && (op.completedAt ?? Infinity) < read.invokedAt) lowerBound += op.by;
      if (op.outcome !== 'fail' && op.invokedAt < read.completedAt) upperBound += op.by;
    }
    if (read.value < lowerBound || read.value > upperBound) {
      violations.push({ read, lowerBound, upperBound });
    }
  }
  const distance = (v: ReadViolation) =>
    Math.max(v.lowerBound - v.read.value, v.read.value - v.upperBound);
  return violations.sort((a, b) => distance(b) - distance(a));
}

export interface TotalsVerdict {
  /** Per counter: Σ ok increments. */
  expected: Map<string, number>;
  /** Per counter, what the store holds less what was acknowledged, where they differ. */
  lost: Map<string, number>;
  duplicated: Map<string, number>;
  /** Increments whose outcome stayed unknown (should be 0: clients retry until known). */
  unknown: number;
}

/** Compares the store's final totals with Σ ok per counter. */
export function checkTotals(history: History, totals: Map<string, number>): TotalsVerdict {
  const expected = new Map<string, number>();
  // An increment whose outcome stayed unknown may or may not have been applied: it can explain
  // a total above Σ ok, never one below it.
  const maybe = new Map<string, number>();
  let unknown = 0;
  for (const op of history.increments) {
    if (op.outcome === 'ok') expected.set(op.counter, (expected.get(op.counter) ?? 0) + op.by);
    if (op.outcome === 'info') {
      unknown++;
      maybe.set(op.counter, (maybe.get(op.counter) ?? 0) + op.by);
    }
  }
  const lost = new Map<string, number>();
  const duplicated = new Map<string, number>();
  for (const counter of new Set([...expected.keys(), ...totals.keys()])) {
    const total = totals.get(counter) ?? 0;
    const ok = expected.get(counter) ?? 0;
    if (total < ok) lost.set(counter, ok - total);
    const excess = total - ok - (maybe.get(counter) ?? 0);
    if (excess > 0) duplicated.set(counter, excess);
  }
  return { expected, lost, duplicated, unknown };
}

/** A small seeded PRNG (mulberry32): the same seed replays the same fault schedule. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
