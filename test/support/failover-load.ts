import { expect } from 'vitest';
import { TallyError, type Tally } from '../../src/index.js';
import { postgresTotals } from './tally-store.js';

/**
 * Options of a store counted under failovers: short timeouts, so that callers learn of a dead
 * primary quickly, and a short lock, which a flush running on a primary when it died leaves held
 * on the promoted replica until it expires.
 */
export const failoverTimeouts = {
  redisCommandTimeoutMs: 1_000,
  incrementTimeoutMs: 3_000,
  flushLockTtlMs: 3_000,
} as const;

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Counting while a Redis topology fails over, and what each caller was told:
 * - keyed clients: increments of 16 counters, each retried with its idempotency key until
 *   acknowledged, so every key ends up counted exactly once;
 * - plain clients: unkeyed increments of `plainCounter`, never retried: each acknowledged one is
 *   counted, each OUTCOME_UNKNOWN one at most once;
 * - a flush loop, so failovers also hit flushes (errors are the flush's to retry).
 */
export class FailoverLoad {
  readonly acknowledged = new Map<string, number>();
  readonly failures = new Map<string, number>();
  /** Why flushes failed (theirs to retry), by message. */
  readonly flushFailures = new Map<string, number>();
  private readonly plain = { acknowledged: 0, unknown: 0 };
  private running = true;
  private keyedIssued = 0;
  private readonly loops: Promise<void>[];

  constructor(
    private readonly tally: Tally,
    readonly plainCounter = 'plain',
    clients = { keyed: 24, plain: 8 },
  ) {
    this.loops = [
      ...Array.from({ length: clients.keyed }, (_, client) => this.keyed(client)),
      ...Array.from({ length: clients.plain }, () => this.unkeyed()),
      this.flushes(),
    ];
  }

  /** Keyed increments issued so far (retries not counted). */
  get issued(): number {
    return this.keyedIssued;
  }

  private note(error: unknown): void {
    const code = error instanceof TallyError ? error.code : `untyped: ${String(error)}`;
    this.failures.set(code, (this.failures.get(code) ?? 0) + 1);
  }

  private async keyed(client: number): Promise<void> {
    for (let seq = 0; this.running; seq++) {
      const counter = `f${(client + seq) % 16}`;
      this.keyedIssued++;
      for (;;) {
        try {
          await this.tally.incr(counter, 1, { idempotencyKey: `${client}-${seq}` });
          this.acknowledged.set(counter, (this.acknowledged.get(counter) ?? 0) + 1);
          break;
        } catch (error) {
          this.note(error);
          await pause(50);
        }
      }
    }
  }

  private async unkeyed(): Promise<void> {
    while (this.running) {
      try {
        await this.tally.incr(this.plainCounter);
        this.plain.acknowledged++;
      } catch (error) {
        this.note(error);
        if (error instanceof TallyError && error.code === 'OUTCOME_UNKNOWN') this.plain.unknown++;
        await pause(50);
      }
    }
  }

  private async flushes(): Promise<void> {
    while (this.running) {
      await this.tally.flush().catch((error: unknown) => {
        const message = error instanceof Error ? error.message : String(error);
        this.flushFailures.set(message, (this.flushFailures.get(message) ?? 0) + 1);
      });
      await pause(200);
    }
  }

  /**
   * Stops, waits for `settled` (the topology back to health), flushes what is left and checks
   * that nothing was counted twice: PostgreSQL and Redis hold each keyed increment at most once
   * and the plain counter at most once per acknowledged or unknown increment; every failure a
   * caller saw was typed. `exact`: and nothing acknowledged was lost. Returns the keyed
   * increments acknowledged but lost.
   */
  async stopAndCheck(
    databaseUrl: string,
    { exact = true, settled }: { exact?: boolean; settled?: () => Promise<unknown> } = {},
  ): Promise<number> {
    this.running = false;
    await Promise.all(this.loops);
    await settled?.();
    await this.tally.flush();
    const totals = await postgresTotals(databaseUrl);
    const counters = [...this.acknowledged.keys()].sort();
    const acknowledged = counters.map((counter) => this.acknowledged.get(counter) ?? 0);
    const flushed = counters.map((counter) => totals.get(counter) ?? 0);
    expect(await this.tally.getMany(counters)).toEqual(flushed);
    if (exact) expect(flushed).toEqual(acknowledged);
    else expect(flushed.filter((value, i) => value > (acknowledged[i] ?? 0))).toEqual([]);
    const plainTotal = await this.tally.get(this.plainCounter);
    if (exact) expect(plainTotal).toBeGreaterThanOrEqual(this.plain.acknowledged);
    expect(plainTotal).toBeLessThanOrEqual(this.plain.acknowledged + this.plain.unknown);
    expect(totals.get(this.plainCounter)).toBe(plainTotal);
    expect([...this.failures.keys()].filter((code) => code.startsWith('untyped'))).toEqual([]);
    return acknowledged.reduce((sum, value, i) => sum + value - (flushed[i] ?? 0), 0);
  }
}
