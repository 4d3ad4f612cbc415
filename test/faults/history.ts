/**
 * A Jepsen-style history of counter operations and the checker that judges it. Pure: no I/O.
 *
 * An increment is invoked once and may be attempted many times with the same idempotency key
 * until one attempt's outcome is known; it ends `ok` (counted exactly once), `fail` (known not
 * counted), or stays `info` (unknown) if the run ends first.
 *
 * A long run records tens of millions of increments, so the history is kept in columns of typed
 * arrays (about 30 bytes an increment) and the checker sorts and binary-searches rather than
 * scanning every increment for every read.
 */
export type Outcome = 'ok' | 'fail' | 'info';

/** One increment, materialised for reports (the history itself stores columns). */
export interface IncrementOp {
  id: number;
  client: string;
  counter: string;
  by: number;
  idempotencyKey: string;
  invokedAt: number;
  outcome: Outcome;
  completedAt: number | undefined;
  attempts: number;
}

export interface ReadOp {
  counter: string;
  invokedAt: number;
  completedAt: number;
  value: number;
}

const outcomes: readonly Outcome[] = ['info', 'ok', 'fail'];

/** Interns names so that a column can hold a small number per row. */
class Names {
  readonly list: string[] = [];
  private readonly index = new Map<string, number>();

  id(name: string): number {
    let id = this.index.get(name);
    if (id === undefined) {
      id = this.list.length;
      this.list.push(name);
      this.index.set(name, id);
    }
    return id;
  }
}

export class History {
  readonly reads: ReadOp[] = [];
  private readonly clients = new Names();
  private readonly counters = new Names();
  private size = 0;
  private client = new Uint16Array(1024);
  private counter = new Uint16Array(1024);
  private amount = new Float64Array(1024);
  private invoked = new Float64Array(1024);
  private completed = new Float64Array(1024);
  private outcome = new Uint8Array(1024);
  private tries = new Uint32Array(1024);

  /**
   * The clock of every event, reads' starts included. Monotonic and finer than a millisecond:
   * with Date.now an increment and a read could share a millisecond, and one invoked in the
   * read's last millisecond looked like one invoked after the read.
   */
  constructor(readonly now: () => number = () => performance.timeOrigin + performance.now()) {}

  /** Records an invocation; returns the increment's id. */
  invoke(client: string, counter: string, by: number): number {
    if (this.size === this.outcome.length) this.grow();
    const id = this.size++;
    this.client[id] = this.clients.id(client);
    this.counter[id] = this.counters.id(counter);
    this.amount[id] = by;
    this.invoked[id] = this.now();
    return id;
  }

  attempt(id: number): void {
    this.tries[id] = (this.tries[id] ?? 0) + 1;
  }

  complete(id: number, result: 'ok' | 'fail'): void {
    this.outcome[id] = outcomes.indexOf(result);
    this.completed[id] = this.now();
  }

  read(counter: string, invokedAt: number, value: number): void {
    this.reads.push({ counter, invokedAt, completedAt: this.now(), value });
  }

  get length(): number {
    return this.size;
  }

  counterOf(id: number): string {
    return this.counters.list[this.counter[id] ?? 0] ?? '';
  }

  byOf(id: number): number {
    return this.amount[id] ?? 0;
  }

  /** Unique across the run: the client's name and the increment's id. */
  keyOf(id: number): string {
    return `${this.clients.list[this.client[id] ?? 0] ?? ''}-${id}`;
  }

  outcomeOf(id: number): Outcome {
    return outcomes[this.outcome[id] ?? 0] ?? 'info';
  }

  op(id: number): IncrementOp {
    return {
      id,
      client: this.clients.list[this.client[id] ?? 0] ?? '',
      counter: this.counterOf(id),
      by: this.byOf(id),
      idempotencyKey: this.keyOf(id),
      invokedAt: this.invoked[id] ?? 0,
      outcome: this.outcomeOf(id),
      completedAt: this.outcomeOf(id) === 'info' ? undefined : this.completed[id],
      attempts: this.tries[id] ?? 0,
    };
  }

  /** Per outcome: how many increments. */
  count(result: Outcome): number {
    const code = outcomes.indexOf(result);
    let n = 0;
    for (let id = 0; id < this.size; id++) if (this.outcome[id] === code) n++;
    return n;
  }

  attempts(): number {
    let n = 0;
    for (let id = 0; id < this.size; id++) n += this.tries[id] ?? 0;
    return n;
  }

  /** Σ by of the increments with this outcome, per counter. */
  sums(result: Outcome): Map<string, number> {
    const code = outcomes.indexOf(result);
    const sums = new Map<string, number>();
    for (let id = 0; id < this.size; id++) {
      if (this.outcome[id] !== code) continue;
      const counter = this.counterOf(id);
      sums.set(counter, (sums.get(counter) ?? 0) + this.byOf(id));
    }
    return sums;
  }

  /** Ids of the increments of these counters, for the history saved on a violation. */
  idsOf(counters: ReadonlySet<string>): number[] {
    const ids: number[] = [];
    for (let id = 0; id < this.size; id++) if (counters.has(this.counterOf(id))) ids.push(id);
    return ids;
  }

  /**
   * Per counter, two step functions of time: Σ by of the ok increments by completion time, and
   * of the increments not failed by invocation time.
   */
  steps(): Map<string, { completedOk: Steps; invokedNotFailed: Steps }> {
    const steps = new Map<string, { completedOk: Steps; invokedNotFailed: Steps }>();
    const ok = outcomes.indexOf('ok');
    const fail = outcomes.indexOf('fail');
    this.counters.list.forEach((name, code) => {
      const completedOk = new Steps();
      const invokedNotFailed = new Steps();
      for (let id = 0; id < this.size; id++) {
        if (this.counter[id] !== code) continue;
        const by = this.amount[id] ?? 0;
        if (this.outcome[id] === ok) completedOk.add(this.completed[id] ?? 0, by);
        if (this.outcome[id] !== fail) invokedNotFailed.add(this.invoked[id] ?? 0, by);
      }
      steps.set(name, {
        completedOk: completedOk.seal(),
        invokedNotFailed: invokedNotFailed.seal(),
      });
    });
    return steps;
  }

  private grow(): void {
    const capacity = this.outcome.length * 2;
    const grown = <T extends Uint8Array | Uint16Array | Uint32Array | Float64Array>(
      column: T,
      make: (n: number) => T,
    ): T => {
      const bigger = make(capacity);
      bigger.set(column);
      return bigger;
    };
    this.client = grown(this.client, (n) => new Uint16Array(n));
    this.counter = grown(this.counter, (n) => new Uint16Array(n));
    this.amount = grown(this.amount, (n) => new Float64Array(n));
    this.invoked = grown(this.invoked, (n) => new Float64Array(n));
    this.completed = grown(this.completed, (n) => new Float64Array(n));
    this.outcome = grown(this.outcome, (n) => new Uint8Array(n));
    this.tries = grown(this.tries, (n) => new Uint32Array(n));
  }
}

/** A step function of time: Σ of the amounts added before (or up to) a time. */
class Steps {
  private times: number[] = [];
  private amounts: number[] = [];
  private prefix = new Float64Array(1);

  add(time: number, amount: number): void {
    this.times.push(time);
    this.amounts.push(amount);
  }

  /** Sorts by time and builds the prefix sums; `before` is valid from here on. */
  seal(): this {
    const order = Uint32Array.from(this.times.keys()).sort(
      (a, b) => (this.times[a] ?? 0) - (this.times[b] ?? 0),
    );
    const times = Array.from(order, (i) => this.times[i] ?? 0);
    this.prefix = new Float64Array(order.length + 1);
    order.forEach((i, rank) => {
      this.prefix[rank + 1] = (this.prefix[rank] ?? 0) + (this.amounts[i] ?? 0);
    });
    this.times = times;
    this.amounts = [];
    return this;
  }

  /** Σ of the amounts added at times strictly before t. */
  before(t: number): number {
    return this.prefix[this.count((time) => time < t)] ?? 0;
  }

  /** Σ of the amounts added at times up to and including t. */
  upTo(t: number): number {
    return this.prefix[this.count((time) => time <= t)] ?? 0;
  }

  /** How many of the sorted times pass `test` (which holds for a prefix of them). */
  private count(test: (time: number) => boolean): number {
    let low = 0;
    let high = this.times.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (test(this.times[mid] ?? Infinity)) low = mid + 1;
      else high = mid;
    }
    return low;
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
  const steps = history.steps();
  const violations: ReadViolation[] = [];
  for (const read of history.reads) {
    const counter = steps.get(read.counter);
    const lowerBound = counter?.completedOk.before(read.invokedAt) ?? 0;
    // Ties go the lenient way: an increment that completed in the instant the read began may
    // follow it, one invoked in the instant the read ended may precede it.
    const upperBound = counter?.invokedNotFailed.upTo(read.completedAt) ?? 0;
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
  const expected = history.sums('ok');
  // An increment whose outcome stayed unknown may or may not have been applied: it can explain
  // a total above Σ ok, never one below it.
  const maybe = history.sums('info');
  const lost = new Map<string, number>();
  const duplicated = new Map<string, number>();
  for (const counter of new Set([...expected.keys(), ...totals.keys()])) {
    const total = totals.get(counter) ?? 0;
    const ok = expected.get(counter) ?? 0;
    if (total < ok) lost.set(counter, ok - total);
    const excess = total - ok - (maybe.get(counter) ?? 0);
    if (excess > 0) duplicated.set(counter, excess);
  }
  return { expected, lost, duplicated, unknown: history.count('info') };
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
