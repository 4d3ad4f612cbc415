/**
 * The system under test, as real processes: Redis (through a TCP proxy), PostgreSQL (through
 * another), 2 × `tally serve`, 2 × `tally worker`, and the faults that can strike each.
 */
import { randomBytes } from 'node:crypto';
import { migrate } from '../../src/index.js';
import {
  startPostgres,
  startRedis,
  type PostgresHandle,
  type RedisHandle,
} from '../support/index.js';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy.js';
import { startTallyProcess, type TallyProcess } from '../support/tally-process.js';

export const shards = 4;
export const jobLockMs = 1_000;
/**
 * Idempotency keys are kept 3 minutes, not the default 24 h: longer than any client retries
 * (they give up 90 s after the load ends), and a long run at 10,000 increments/s would
 * otherwise fill Redis with hundreds of millions of keys, which makes every Redis restart
 * reload gigabytes of AOF (the first 32-minute run slowed from 0.75 to 0.14 faults a second).
 */
export const idempotencyWindowMs = 180_000;

export interface SystemOptions {
  persistence: 'aof-always' | 'none';
  /** Extra environment for the workers (a deliberately broken flush, fault points). */
  workerEnv?: Record<string, string>;
}

export class FaultySystem {
  readonly keyPrefix = `faults${randomBytes(3).toString('hex')}`;
  readonly apis: TallyProcess[] = [];
  readonly workers: TallyProcess[] = [];
  private stopping = false;
  private constructor(
    readonly redis: RedisHandle,
    readonly postgres: PostgresHandle,
    readonly redisProxy: TcpProxy,
    readonly postgresProxy: TcpProxy,
    /** The database, direct and through the proxy. */
    readonly databaseUrl: string,
    readonly proxiedDatabaseUrl: string,
    private readonly options: SystemOptions,
  ) {}

  static async start(options: SystemOptions): Promise<FaultySystem> {
    const redis = await startRedis({ persistence: options.persistence });
    const postgres = await startPostgres();
    const databaseUrl = await postgres.createDatabase();
    await migrate(databaseUrl);
    const redisProxy = await startTcpProxy(redis.host, redis.port);
    const postgresProxy = await startTcpProxy(postgres.host, postgres.port);
    const proxied = new URL(databaseUrl);
    proxied.port = String(postgresProxy.port);
    const system = new FaultySystem(
      redis,
      postgres,
      redisProxy,
      postgresProxy,
      databaseUrl,
      proxied.toString(),
      options,
    );
    for (let i = 0; i < 2; i++) system.supervise(system.apis, i, () => system.startApi());
    for (let i = 0; i < 2; i++) system.supervise(system.workers, i, () => system.startWorker());
    await Promise.all(system.apis.map((api) => api.apiPort()));
    return system;
  }

  /** What every service of the store reads: Redis and PostgreSQL through the proxies. */
  get env(): Record<string, string> {
    return {
      REDIS_URL: `redis://127.0.0.1:${this.redisProxy.port}`,
      DATABASE_URL: this.proxiedDatabaseUrl,
      TALLY_SHARDS: String(shards),
      TALLY_KEY_PREFIX: this.keyPrefix,
      TALLY_LOG_LEVEL: 'info',
      TALLY_IDEMPOTENCY_WINDOW_MS: String(idempotencyWindowMs),
      // The scenarios choose the persistence, a Redis without any included: their checks
      // measure the loss against the bound it allows.
      TALLY_ACCEPT_REDIS_LOSS: 'bounded',
    };
  }

  /** The store without proxies, for the checks after the run. */
  get directEnv(): Record<string, string> {
    return { ...this.env, REDIS_URL: this.redis.url, DATABASE_URL: this.databaseUrl };
  }

  /**
   * Starts a process in `slot` and, like an orchestrator with `restart: always`, starts it again
   * whenever it exits: killed by a fault, or failing at start-up because Redis or PostgreSQL was
   * down at that moment (services fail fast and are restarted).
   */
  private supervise(slots: TallyProcess[], slot: number, start: () => TallyProcess): void {
    const process = start();
    slots[slot] = process;
    void process.exited.then(() => {
      setTimeout(() => {
        if (!this.stopping) this.supervise(slots, slot, start);
      }, 200);
    });
  }

  private startApi(): TallyProcess {
    return startTallyProcess('serve', { ...this.env, PORT: '0' });
  }

  private startWorker(): TallyProcess {
    return startTallyProcess('worker', {
      ...this.env,
      TALLY_FLUSH_INTERVAL_MS: '200',
      TALLY_JOB_LOCK_MS: String(jobLockMs),
      TALLY_FLUSH_LOCK_TTL_MS: '1000',
      ...this.options.workerEnv,
    });
  }

  /** Base URLs of the API processes that are up. */
  async apiUrls(): Promise<string[]> {
    const urls: string[] = [];
    for (const api of this.apis) {
      const port = await Promise.race([
        api.apiPort(),
        new Promise<undefined>((r) => setTimeout(r, 50, undefined)),
      ]).catch(() => undefined);
      if (port !== undefined) urls.push(`http://127.0.0.1:${port}`);
    }
    return urls;
  }

  async killApi(index: number): Promise<void> {
    const api = this.apis[index];
    if (api === undefined) return;
    api.kill('SIGKILL');
    await api.exited; // the supervisor starts it again
  }

  async killWorker(index: number): Promise<void> {
    const worker = this.workers[index];
    if (worker === undefined) return;
    worker.kill('SIGKILL');
    await worker.exited; // the supervisor starts it again
  }

  /** Pauses a worker past its BullMQ job lock: another replica takes its jobs meanwhile. */
  async pauseWorker(index: number, ms: number): Promise<void> {
    const worker = this.workers[index];
    worker?.kill('SIGSTOP');
    await new Promise((resolve) => setTimeout(resolve, ms));
    worker?.kill('SIGCONT');
  }

  async crashRedis(): Promise<void> {
    await this.redis.kill('SIGKILL');
    await this.redis.restart();
  }

  /** Redis SHUTDOWN (SIGTERM: the AOF is fsynced), then a restart. */
  async shutdownRedis(): Promise<void> {
    await this.redis.kill('SIGTERM');
    await this.redis.restart();
  }

  async stopPostgres(ms: number): Promise<void> {
    await this.postgres.stop('immediate');
    await new Promise((resolve) => setTimeout(resolve, ms));
    await this.postgres.start();
  }

  async stop(): Promise<void> {
    this.stopping = true;
    for (const process of [...this.apis, ...this.workers]) {
      process.kill('SIGCONT');
      process.kill('SIGKILL');
      await process.exited;
    }
    await this.redisProxy.close();
    await this.postgresProxy.close();
    await this.postgres.destroy();
    await this.redis.stop();
  }
}
