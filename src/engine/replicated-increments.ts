import calculateSlot from 'cluster-key-slot';
import { Cluster } from 'ioredis';
import { TallyError } from '../errors.js';
import {
  isNoScript,
  ScriptStatus,
  type RedisConnection,
  type ScriptReply,
  type Scripts,
} from '../redis/scripts.js';

interface Call {
  keys: readonly string[];
  args: readonly (readonly (string | number)[])[];
  resolve: (reply: ScriptReply) => void;
  reject: (error: unknown) => void;
}

/**
 * `minReplicas`: a turn's increment calls, then one WAIT, in one pipeline per Redis server.
 * WAIT blocks its connection until the replicas answer, so a WAIT after every call let one call
 * through per round to the replicas (0.14× the throughput without); one after all of a server's
 * calls of the turn covers them all (WAIT counts every write of the connection before it). A
 * call whose WAIT confirms fewer replicas is OUTCOME_UNKNOWN: the primary applied it.
 */
export class ReplicatedIncrements {
  private turn: Call[] = [];

  constructor(
    private readonly redis: RedisConnection,
    private readonly scripts: Scripts,
    private readonly replicas: number,
    private readonly timeoutMs: number,
  ) {}

  /** One increment.lua call, sent with the others of this turn. */
  call(keys: readonly string[], args: Call['args']): Promise<ScriptReply> {
    return new Promise((resolve, reject) => {
      // A microtask: every shard's call of the group commit's turn is made before it runs.
      if (this.turn.push({ keys, args, resolve, reject }) === 1) queueMicrotask(this.send);
    });
  }

  private readonly send = (): void => {
    const turn = this.turn;
    this.turn = [];
    for (const calls of this.byServer(turn)) void this.sendToServer(calls);
  };

  /** The calls per server: on a cluster, by the primary its slot map names for the shard. */
  private byServer(turn: Call[]): Call[][] {
    const { redis } = this;
    if (!(redis instanceof Cluster)) return [turn];
    const groups = new Map<string, Call[]>();
    for (const call of turn) {
      // The slot's whole node list, as ioredis groups a pipeline's slots.
      const server = redis.slots[calculateSlot(call.keys[0] ?? '')]?.join(';') ?? '';
      groups.set(server, [...(groups.get(server) ?? []), call]);
    }
    return [...groups.values()];
  }

  private async sendToServer(calls: Call[], attempt = 0): Promise<void> {
    let sent: Awaited<ReturnType<Scripts['incrementsAndWait']>>;
    try {
      sent = await this.scripts.incrementsAndWait(calls, {
        replicas: this.replicas,
        timeoutMs: this.timeoutMs,
      });
    } catch (error) {
      for (const call of calls) call.reject(error);
      return;
    }
    const { replies, replicas: acknowledged } = sent;
    const confirmed = typeof acknowledged === 'number' && acknowledged >= this.replicas;
    // NOSCRIPT: not applied (a restarted or flushed server). Loaded, those calls go again, once.
    const unloaded = attempt === 0 ? calls.filter((_, i) => isNoScript(replies[i])) : [];
    calls.forEach((call, index) => {
      const reply = replies[index];
      if (unloaded.includes(call)) return;
      if (reply === undefined || reply instanceof Error) {
        call.reject(reply ?? new Error('no reply'));
      } else if (confirmed || reply[0] !== ScriptStatus.ok) {
        // (A shard that lost its totals applied nothing: no replica needs to hold it.)
        call.resolve(reply);
      } else call.reject(this.unconfirmed(acknowledged));
    });
    if (unloaded.length === 0) return;
    try {
      await this.scripts.loadScriptOn(unloaded[0]?.keys[0] ?? '', 'increment');
    } catch (error) {
      for (const call of unloaded) call.reject(error);
      return;
    }
    await this.sendToServer(unloaded, attempt + 1);
  }

  private unconfirmed(acknowledged: number | Error): TallyError {
    const count = typeof acknowledged === 'number' ? `only ${acknowledged}` : 'none';
    return new TallyError(
      'OUTCOME_UNKNOWN',
      `Redis' primary applied the increment, but ${count} of the ${this.replicas} replicas ` +
        `asked for (minReplicas) confirmed it within ${this.timeoutMs} ms: a failover could ` +
        'lose it. Retry with the same idempotency key to count it exactly once.',
      acknowledged instanceof Error ? { cause: acknowledged } : undefined,
    );
  }
}
