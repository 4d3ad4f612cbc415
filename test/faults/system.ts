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
import { startRedisCluster, type RedisClusterHandle } from '../support/redis-cluster.js';
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
  /**
   * 'cluster': a Redis Cluster of 3 primaries and 3 replicas (node timeout 1 s) instead of one
   * Redis behind a proxy; its faults are failovers (system.failoverPrimary and the others).
   */
  topology?: 'single' | 'cluster';
  /** TALLY_MIN_REPLICAS of every process (cluster runs). */
  minReplicas?: number;
  /** Extra environment for the workers (a deliberately broken flush, fault points). */
  workerEnv?: Record<string, string>;
}

export class FaultySystem {
  readonly keyPrefix = `faults${randomBytes(3).toString('hex')}`;
  readonly apis: TallyProcess[] = [];
  readonly workers: TallyProcess[] = [];
  private stopping = false;
  private constructor(
    /** One Redis behind `redisProxy`, or a cluster. */
    private readonly redisServer: { redis: RedisHandle; proxy: TcpProxy } | RedisClusterHandle,
    readonly postgres: PostgresHandle,
    readonly postgresProxy: TcpProxy,
    /** The database, direct and through the proxy. */
    readonly databaseUrl: string,
    readonly proxiedDatabaseUrl: string,
    private readonly options: SystemOptions,
  ) {}

  static async start(options: SystemOptions): Promise<FaultySystem> {
    const redisServer =
      options.topology === 'cluster'
        ? await startRedisCluster({ persistence: options.persistence })
        : await FaultySystem.proxiedRedis(options.persistence);
    const postgres = await startPostgres();
    const databaseUrl = await postgres.createDatabase();
    await migrate(databaseUrl);
    const postgresProxy = await startTcpProxy(postgres.host, postgres.port);
    const proxied = new URL(databaseUrl);
    proxied.port = String(postgresProxy.port);
    const system = new FaultySystem(
      redisServer,
      postgres,
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

  private static async proxiedRedis(persistence: SystemOptions['persistence']) {
    const redis = await startRedis({ persistence });
    return { redis, proxy: await startTcpProxy(redis.host, redis.port) };
  }

  /** The one Redis (a cluster run has none). */
  get redis(): RedisHandle {
    if ('url' in this.redisServer) throw new Error('this run has a Redis Cluster');
    return this.redisServer.redis;
  }

  get redisProxy(): TcpProxy {
    if ('url' in this.redisServer) throw new Error('this run has a Redis Cluster');
    return this.redisServer.proxy;
  }

  /** The cluster, in a cluster run. */
  get cluster(): RedisClusterHandle | undefined {
    return 'url' in this.redisServer ? this.redisServer : undefined;
  }

  /** What every service of the store reads: Redis and PostgreSQL through the proxies. */
  get env(): Record<string, string> {
    return {
      REDIS_URL: this.cluster?.url ?? `redis://127.0.0.1:${this.redisProxy.port}`,
      TALLY_MIN_REPLICAS: String(this.options.minReplicas ?? 0),
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
    return {
      ...this.env,
      REDIS_URL: this.cluster?.url ?? this.redis.url,
      DATABASE_URL: this.databaseUrl,
    };
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

  /** The `pick`-th of the cluster's primaries now (modulo their number). */
  private async primaryAt(pick: number): Promise<RedisHandle | undefined> {
    const primaries = await this.requireCluster().primaries();
    return primaries[pick % primaries.length];
  }

  /** A cluster's failover: kill -9 of a primary, its replica promoted, the old one back as one. */
  async failoverPrimary(pick: number): Promise<void> {
    const cluster = this.requireCluster();
    const victim = await this.primaryAt(pick);
    if (victim === undefined) return;
    await victim.kill('SIGKILL');
    await cluster.waitHealthy({ replicated: false });
    await victim.restart();
    await cluster.waitHealthy();
  }

  /** kill -9 of a replica, and its restart: no failover, its primary loses its copy a while. */
  async killReplica(pick: number): Promise<void> {
    const cluster = this.requireCluster();
    const primary = await this.primaryAt(pick);
    const [replica] = primary === undefined ? [] : await cluster.replicasOf(primary);
    if (replica === undefined) return;
    await replica.kill('SIGKILL');
    await replica.restart();
    await cluster.waitHealthy();
  }

  /** A primary paused past the node timeout: its replica takes over, it comes back as one. */
  async pausePrimary(pick: number): Promise<void> {
    const cluster = this.requireCluster();
    const victim = await this.primaryAt(pick);
    if (victim === undefined) return;
    await victim.kill('SIGSTOP');
    try {
      await cluster.waitHealthy({ replicated: false });
    } finally {
      await victim.kill('SIGCONT');
    }
    await cluster.waitHealthy();
  }

  private requireCluster(): RedisClusterHandle {
    const { cluster } = this;
    if (cluster === undefined) throw new Error('this run has one Redis, not a cluster');
    return cluster;
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
    await this.postgresProxy.close();
    await this.postgres.destroy();
    if ('url' in this.redisServer) await this.redisServer.stop();
    else {
      await this.redisServer.proxy.close();
      await this.redisServer.redis.stop();
    }
  }
}
