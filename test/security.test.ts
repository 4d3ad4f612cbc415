/**
 * The attacks and unsafe settings Tally was once open to, each against a real `tally serve`,
 * `tally worker` or CLI process on real Redis and PostgreSQL servers. Kept in one file so the
 * list stays visible: every finding of the hardening review has a test here that fails
 * without its fix.
 */
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { performance } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTally, migrate, type Tally } from '../src/index.js';
import { runTypeScript, type ChildResult } from './support/child-process.js';
import { rawRequest } from './support/raw-http.js';
import { createDatabase, startRedis, waitFor, type RedisHandle } from './support/index.js';
import { startTallyProcess, type TallyProcess } from './support/tally-process.js';
import { postgresTotals } from './support/tally-store.js';

const cli = new URL('../src/cli/main.ts', import.meta.url);
const token = `tok-${randomBytes(12).toString('hex')}`;

let redis: RedisHandle;
let raw: Redis;
let databaseUrl: string;
let keyPrefix: string;
let tally: Tally;
let server: TallyProcess;
let port: number;

function storeEnv(extra: Record<string, string> = {}): Record<string, string> {
  return {
    REDIS_URL: redis.url,
    DATABASE_URL: databaseUrl,
    TALLY_SHARDS: '4',
    TALLY_KEY_PREFIX: keyPrefix,
    TALLY_LOG_LEVEL: 'info',
    ...extra,
  };
}

beforeAll(async () => {
  redis = await startRedis({ persistence: 'aof-always' });
  raw = new Redis(redis.url);
  databaseUrl = await createDatabase();
  await migrate(databaseUrl);
  keyPrefix = `sec${randomBytes(3).toString('hex')}`;
  tally = await createTally({ redis: redis.url, postgres: databaseUrl, shards: 4, keyPrefix });
  server = startTallyProcess(
    'serve',
    storeEnv({
      PORT: '0',
      TALLY_API_TOKEN: token,
      TALLY_REQUEST_TIMEOUT_MS: '1500',
      TALLY_KEEP_ALIVE_TIMEOUT_MS: '1000',
      TALLY_DURABILITY_CHECK_INTERVAL_MS: '200',
    }),
  );
  port = await server.apiPort();
});
afterAll(async () => {
  server.kill('SIGTERM');
  await server.exited;
  await tally.close();
  await raw.quit();
  await redis.stop();
});

interface RawAnswer {
  status: number;
  head: string;
  body: string;
}

/** An answer read off the socket: its status, head and body. */
async function rawAnswer(request: string): Promise<RawAnswer> {
  const text = await rawRequest(port, request);
  const [head = '', body = ''] = text.split('\r\n\r\n');
  return { status: Number(/^HTTP\/1\.1 (\d+)/.exec(head)?.[1] ?? 0), head, body };
}

function requestLine(
  line: string,
  options: { body?: unknown; headers?: Record<string, string> } = {},
): string {
  const body = options.body === undefined ? '' : JSON.stringify(options.body);
  const headers = {
    host: `127.0.0.1:${port}`,
    connection: 'close',
    ...(options.body === undefined
      ? {}
      : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) }),
    ...options.headers,
  };
  const lines = Object.entries(headers).map(([name, value]) => `${name}: ${value}`);
  return `${line}\r\n${lines.join('\r\n')}\r\n\r\n${body}`;
}

const auth = { authorization: `Bearer ${token}` };

async function call(
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = auth,
): Promise<{ status: number; json: any; ms: number }> {
  const started = performance.now();
  const response = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  return {
    status: response.status,
    json: text === '' ? undefined : JSON.parse(text),
    ms: performance.now() - started,
  };
}

const name = (base: string) => `${base}-${randomBytes(4).toString('hex')}`;

describe('1. authorisation is decided on the matched route', () => {
  it('refuses every encoded, absolute-form and asterisk-form target without a token', async () => {
    const counter = name('x');
    const forms = [
      `POST /%761/counters/${counter}/increment HTTP/1.1`,
      `POST /v%31/counters/${counter}/increment HTTP/1.1`,
      `POST http://127.0.0.1:${port}/v1/counters/${counter}/increment HTTP/1.1`,
      `GET /%761/counters/${counter} HTTP/1.1`,
      `GET *v1/counters/${counter} HTTP/1.1`,
    ];
    for (const form of forms) {
      const answer = await rawAnswer(requestLine(form));
      expect(answer.status, form).toBe(401);
      expect(JSON.parse(answer.body), form).toMatchObject({ error: { code: 'UNAUTHORIZED' } });
    }
    const batch = await rawAnswer(
      requestLine('POST /%761/increments HTTP/1.1', {
        body: { increments: [{ counter, by: 5 }] },
      }),
    );
    expect(batch.status).toBe(401);
    expect(await tally.get(counter)).toBe(0);

    // The same targets do reach the routes: with the token they count.
    for (const form of forms.slice(0, 3)) {
      const answer = await rawAnswer(requestLine(form, { headers: auth }));
      expect(answer.status, form).toBe(200);
    }
    expect(await tally.get(counter)).toBe(3);
  });

  it('denies by default: unknown paths and wrong methods need the token too', async () => {
    expect((await call('GET', '/v2/anything', undefined, {})).status).toBe(401);
    expect((await call('GET', '/admin', undefined, {})).status).toBe(401);
    expect((await call('PUT', '/v1/counters/a', undefined, {})).status).toBe(401);
    expect((await call('DELETE', '/v1/counters/a', undefined, {})).status).toBe(401);
    const wrongMethod = await call('PUT', '/v1/counters/a');
    expect(wrongMethod.status).toBe(405);
    expect(wrongMethod.json).toMatchObject({ error: { code: 'METHOD_NOT_ALLOWED' } });
  });

  it('leaves only the probes, the scrape and the API description open; readiness says little', async () => {
    expect((await call('GET', '/healthz', undefined, {})).status).toBe(200);
    expect((await fetch(`http://127.0.0.1:${port}/metrics`)).status).toBe(200);
    expect((await call('GET', '/openapi.json', undefined, {})).status).toBe(200);
    const anonymous = await call('GET', '/readyz', undefined, {});
    expect(anonymous.status).toBe(200);
    expect(anonymous.json).toEqual({ ready: true });
    const authenticated = await call('GET', '/readyz');
    expect(authenticated.json.durability.redisVersion).toMatch(/^\d/);
  });

  it('takes the bearer scheme in any case (RFC 7235)', async () => {
    for (const scheme of ['bearer', 'BEARER', 'Bearer']) {
      const answer = await call('GET', '/v1/counters/a', undefined, {
        authorization: `${scheme} ${token}`,
      });
      expect(answer.status, scheme).toBe(200);
    }
    expect((await call('GET', '/v1/counters/a', undefined, { authorization: token })).status).toBe(
      401,
    );
  });
});

describe('2. the work of one request is bounded before it is done', () => {
  it('refuses a usage query of 87.6M buckets at once, and the server stays responsive', async () => {
    const [usage, health] = await Promise.all([
      call(
        'GET',
        '/v1/counters/at/usage?from=0000-01-01T00:00:00Z&to=9999-12-31T00:00:00Z&granularity=hour',
      ),
      call('GET', '/healthz', undefined, {}),
    ]);
    expect(usage.status).toBe(400);
    expect(usage.json.error.message).toMatch(/87658176 hour buckets; ask for at most 10000/);
    // Listing the buckets first took 5 s with the event loop blocked (and 1.5 GB).
    expect(usage.ms).toBeLessThan(1_000);
    expect(health.ms).toBeLessThan(1_000);
  });
});

describe('3. increments land in the buckets of their instant, within a window', () => {
  it('refuses `at` outside the window, and writes no bucket for it', async () => {
    const counter = name('dated');
    for (const at of ['0001-01-01T00:00:00Z', '9999-01-01T00:00:00Z']) {
      const answer = await call('POST', '/v1/increments', { increments: [{ counter, at }] });
      expect(answer.status, at).toBe(400);
      expect(answer.json.error.message, at).toMatch(/outside the accepted window/);
    }
    const soon = new Date(Date.now() + 10 * 60_000).toISOString();
    expect(
      (await call('POST', '/v1/increments', { increments: [{ counter, at: soon }] })).status,
    ).toBe(400);
    const hourAgo = Date.now() - 3_600_000;
    const accepted = await call('POST', '/v1/increments', {
      increments: [{ counter, at: new Date(hourAgo).toISOString(), by: 4 }],
    });
    expect(accepted.status).toBe(200);
    await tally.flush();
    const rows = await postgresRows(
      'SELECT granularity, bucket_start FROM tally.counter_buckets WHERE name = $1',
      [counter],
    );
    const hourStart = Math.floor(hourAgo / 3_600_000) * 3_600_000;
    expect(rows.map((row) => (row.bucket_start as Date).getTime())).toContain(hourStart);
    expect(rows.every((row) => (row.bucket_start as Date).getUTCFullYear() >= 2026)).toBe(true);
  });
});

async function postgresRows(text: string, values: unknown[] = []) {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    return (await client.query<Record<string, unknown>>(text, values)).rows;
  } finally {
    await client.end();
  }
}

function allOutput(result: ChildResult): string {
  return `${result.stdout}\n${result.stderr}`;
}

describe('4. no credential reaches a log line or an error message', () => {
  it('keeps a refused Redis password and a PostgreSQL password out of every command', async () => {
    const guarded = await startRedis();
    const admin = new Redis(guarded.url);
    await admin.call('ACL', 'SETUSER', 'u', 'on', '>the-right-one', '~*', '&*', '+@all');
    await admin.quit();
    const refused = `redis://u:hunter2pass@127.0.0.1:${guarded.port}`;
    const env = {
      ...storeEnv(),
      REDIS_URL: refused,
      DATABASE_URL: 'postgres://postgres:pg-hunter2@127.0.0.1:1/tally',
      TALLY_LOG_LEVEL: 'debug',
      TALLY_ACCEPT_REDIS_LOSS: 'any',
    };
    try {
      for (const args of [['serve'], ['worker'], ['status'], ['flush'], ['reconcile']]) {
        const result = await runTypeScript(cli, args, env);
        const output = allOutput(result);
        expect(output, args[0]).not.toContain('hunter2pass');
        expect(result.code, args[0]).toBe(2);
        expect(result.stderr, args[0]).toMatch(/Redis refused the credentials of REDIS_URL/);
      }
      // Redis accepts, PostgreSQL is unreachable: its password is not printed either.
      const pgDown = await runTypeScript(cli, ['status'], { ...env, REDIS_URL: redis.url });
      expect(pgDown.code).toBe(3);
      expect(pgDown.stderr).toMatch(/PostgreSQL \(DATABASE_URL\) could not be reached/);
      expect(allOutput(pgDown)).not.toContain('pg-hunter2');
      const malformed = await runTypeScript(cli, ['serve'], {
        ...env,
        DATABASE_URL: 'postgres//postgres:pg-hunter2@host/db',
      });
      expect(malformed.code).toBe(2);
      expect(malformed.stderr).toMatch(/DATABASE_URL is not a valid URL/);
      expect(allOutput(malformed)).not.toContain('pg-hunter2');
    } finally {
      await guarded.stop();
    }
  });

  it('never logs the bearer token', () => {
    expect(server.logs.length).toBeGreaterThan(0);
    expect(JSON.stringify(server.logs)).not.toContain(token);
  });
});

describe('5. an evicting or non-persistent Redis is refused, checked live, and explained', () => {
  it('serve and worker refuse a Redis that can lose or evict unless told to accept it', async () => {
    const loose = await startRedis({ persistence: 'none' });
    // A store of its own: this Redis starts empty, which the main store would record as a loss.
    const database = await createDatabase();
    await migrate(database);
    const env = { ...storeEnv(), REDIS_URL: loose.url, DATABASE_URL: database };
    try {
      for (const command of ['serve', 'worker']) {
        const refused = await runTypeScript(cli, [command], env);
        expect(refused.code, command).toBe(2);
        expect(refused.stderr, command).toMatch(
          /Refusing this Redis.*set TALLY_ACCEPT_REDIS_LOSS=bounded \(tally serve, tally worker\)/,
        );
      }
      const bounded = startTallyProcess('serve', {
        ...env,
        PORT: '0',
        TALLY_ACCEPT_REDIS_LOSS: 'bounded',
      });
      await bounded.apiPort();
      bounded.kill('SIGTERM');
      await bounded.exited;

      const looseRaw = new Redis(loose.url);
      await looseRaw.config('SET', 'maxmemory-policy', 'allkeys-lru');
      await looseRaw.quit();
      const evicting = await runTypeScript(cli, ['serve'], {
        ...env,
        TALLY_ACCEPT_REDIS_LOSS: 'bounded',
      });
      expect(evicting.code).toBe(2);
      expect(evicting.stderr).toMatch(
        /maxmemory-policy is allkeys-lru.*TALLY_ACCEPT_REDIS_LOSS=any/,
      );
      const anything = startTallyProcess('serve', {
        ...env,
        PORT: '0',
        TALLY_ACCEPT_REDIS_LOSS: 'any',
      });
      await anything.apiPort();
      anything.kill('SIGTERM');
      await anything.exited;
    } finally {
      await loose.stop();
    }
  });

  it('readiness and a metric follow a live CONFIG SET', async () => {
    expect((await call('GET', '/readyz')).status).toBe(200);
    await raw.config('SET', 'maxmemory-policy', 'allkeys-lru');
    try {
      const unready = await waitFor('readiness to follow the setting', async () => {
        const answer = await call('GET', '/readyz');
        return answer.status === 503 ? answer : undefined;
      });
      expect(unready.json.durability).toMatchObject({ accepted: false });
      expect(unready.json.durability.problem).toMatch(/maxmemory-policy is allkeys-lru/);
      const metrics = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text());
      expect(metrics).toMatch(/^tally_redis_settings_accepted 0$/m);
      expect(server.logs.some((line) => /no longer accepted/.test(String(line.msg)))).toBe(true);
    } finally {
      await raw.config('SET', 'maxmemory-policy', 'noeviction');
    }
    await waitFor('readiness to come back', async () =>
      (await call('GET', '/readyz')).status === 200 ? true : undefined,
    );
  });

  it('the worker re-creates flush jobs whose keys were evicted while their schedulers stayed', async () => {
    const worker = startTallyProcess('worker', storeEnv({ TALLY_FLUSH_INTERVAL_MS: '200' }));
    try {
      await worker.waitForLog('start-up', (line) => line.msg === 'flush worker started');
      const counter = name('evicted-jobs');
      await tally.incr(counter, 2);
      await waitFor('a first flush', async () =>
        (await postgresTotals(databaseUrl)).get(counter) === 2 ? true : undefined,
      );
      // What allkeys-lru did: every job key gone, the schedulers' own keys left.
      const queueKeys = await raw.keys(`{${keyPrefix}:bull}:flush:*`);
      const kept = /:flush:(repeat(:flush-shard-\d+)?|meta)$/;
      const evicted = queueKeys.filter((key) => !kept.test(key));
      expect(evicted.length).toBeGreaterThan(0);
      await raw.del(...evicted);
      await tally.incr(counter, 3);
      await worker.waitForLog('the jobs re-created', (line) =>
        /flush jobs missing/.test(String(line.msg)),
      );
      await waitFor(
        'flushing to resume',
        async () => ((await postgresTotals(databaseUrl)).get(counter) === 5 ? true : undefined),
        { timeoutMs: 20_000 },
      );
    } finally {
      worker.kill('SIGTERM');
      await worker.exited;
    }
  });

  it('reconcile blames evictions, not a PostgreSQL restore, when Redis evicted keys', async () => {
    const evicting = await startRedis({ persistence: 'none' });
    const evictingRaw = new Redis(evicting.url);
    const database = await createDatabase();
    await migrate(database);
    const store = await createTally({
      redis: evicting.url,
      postgres: database,
      shards: 4,
      redisLossAccepted: 'any',
    });
    try {
      const counter = name('evicted-delta');
      await store.incr(counter, 7);
      await store.flush();
      await store.incr(counter, 5);
      // A pending delta evicted before its flush (deleted here, as allkeys-lru would), and
      // evictions on record.
      for (const key of await evictingRaw.keys('tally:*:pending')) await evictingRaw.del(key);
      await evictingRaw.config('SET', 'maxmemory-policy', 'allkeys-lru');
      const used = Number(/used_memory:(\d+)/.exec(await evictingRaw.info('memory'))?.[1]);
      await evictingRaw.config('SET', 'maxmemory', String(used + 2_000_000));
      const filler = 'x'.repeat(10_000);
      for (let i = 0; i < 400; i++) await evictingRaw.set(`filler:${i}`, filler);
      expect(
        Number(/evicted_keys:(\d+)/.exec(await evictingRaw.info('stats'))?.[1]),
      ).toBeGreaterThan(0);

      const env = { REDIS_URL: evicting.url, DATABASE_URL: database, TALLY_SHARDS: '4' };
      const check = await runTypeScript(cli, ['reconcile', '--json'], env);
      const report = JSON.parse(check.stdout) as { explanations: { cause: string }[] };
      expect(report.explanations.map((e) => e.cause)).toEqual(['redis-evicted']);
      const human = await runTypeScript(cli, ['reconcile'], env);
      expect(human.stdout).toMatch(/redis-evicted: Redis evicted \d+ keys/);
      expect(human.stdout).not.toMatch(/restored from an older backup/);
    } finally {
      await store.close();
      await evictingRaw.quit();
      await evicting.stop();
    }
  });
});

describe('6. slow clients are cut off', () => {
  it('closes a request whose body arrives a byte at a time, and an idle keep-alive connection', async () => {
    const started = performance.now();
    const trickle = await new Promise<{ text: string; ms: number }>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      let text = '';
      socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
      socket.write(
        `POST /v1/increments HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${token}\r\n` +
          'content-type: application/json\r\ncontent-length: 200\r\n\r\n{',
      );
      const drip = setInterval(() => socket.write(' '), 200);
      socket.on('close', () => {
        clearInterval(drip);
        resolve({ text, ms: performance.now() - started });
      });
      socket.on('error', () => undefined);
    });
    expect(trickle.text).toMatch(/^HTTP\/1\.1 408/);
    expect(trickle.text).toContain('"code":"REQUEST_TIMEOUT"');
    // TALLY_REQUEST_TIMEOUT_MS is 1500 here; Node checks every second.
    expect(trickle.ms).toBeLessThan(4_000);

    const idleClosed = await new Promise<number>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      const opened = performance.now();
      socket.write('GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n');
      socket.on('data', () => undefined);
      socket.on('close', () => {
        resolve(performance.now() - opened);
      });
    });
    expect(idleClosed).toBeLessThan(4_000);
  });
});

describe('7. a process configured for another store is refused', () => {
  it('refuses another TALLY_KEY_PREFIX (exit 2) and records no false Redis loss', async () => {
    for (const command of [['worker'], ['status'], ['reconcile']]) {
      const result = await runTypeScript(cli, command, storeEnv({ TALLY_KEY_PREFIX: 'other' }));
      expect(result.code, command[0]).toBe(2);
      expect(result.stderr, command[0]).toMatch(
        new RegExp(`set up with key prefix "${keyPrefix}".*TALLY_KEY_PREFIX`),
      );
    }
    expect(await postgresRows('SELECT * FROM tally.redis_losses')).toEqual([]);
  });
});

describe('8. authentication cannot be switched off by accident', () => {
  it('refuses empty, blank and short tokens', async () => {
    for (const value of [' ', ',', 'short', `${token},`, `${token}, `, 'sixteen chars ok']) {
      const result = await runTypeScript(cli, ['serve'], storeEnv({ TALLY_API_TOKEN: value }));
      expect(result.code, JSON.stringify(value)).toBe(2);
      expect(result.stderr, JSON.stringify(value)).toMatch(/TALLY_API_TOKEN: token \d of \d/);
    }
  });
});

describe('8b. an API reachable from other machines is not served without a token by accident', () => {
  it('refuses a non-loopback HOST without TALLY_API_TOKEN unless TALLY_ALLOW_UNAUTHENTICATED=yes', async () => {
    for (const host of ['0.0.0.0', '::']) {
      const refused = await runTypeScript(cli, ['serve'], storeEnv({ HOST: host, PORT: '0' }));
      expect(refused.code, host).toBe(2);
      expect(refused.stderr, host).toMatch(
        /can be reached from other machines and TALLY_API_TOKEN is not set/,
      );
    }
    const allowed = startTallyProcess(
      'serve',
      storeEnv({ HOST: '0.0.0.0', PORT: '0', TALLY_ALLOW_UNAUTHENTICATED: 'yes' }),
    );
    await allowed.apiPort();
    allowed.kill('SIGTERM');
    await allowed.exited;
  });
});

describe('9. an idempotency key reused for another increment is refused', () => {
  it('answers 422 (or key-reused in a batch) and keeps the first outcome', async () => {
    const counter = name('paid');
    const path = `/v1/counters/${counter}/increment`;
    expect((await call('POST', path, { by: 2, idempotencyKey: 'pay-1' })).json.status).toBe(
      'applied',
    );
    const reused = await call('POST', path, { by: 3, idempotencyKey: 'pay-1' });
    expect(reused.status).toBe(422);
    expect(reused.json.error).toMatchObject({
      code: 'IDEMPOTENCY_KEY_REUSED',
      details: { counter, idempotencyKey: 'pay-1', value: 2 },
    });
    expect((await call('POST', path, { by: 2, idempotencyKey: 'pay-1' })).json.status).toBe(
      'duplicate',
    );
    const at = new Date(Date.now() - 60_000).toISOString();
    const batch = await call('POST', '/v1/increments', {
      increments: [
        { counter, by: 2, idempotencyKey: 'pay-1', limit: 100 },
        { counter, by: 2, idempotencyKey: 'pay-1', at },
        { counter, by: 2, idempotencyKey: 'pay-1' },
      ],
    });
    expect(batch.json.results.map((r: { status: string }) => r.status)).toEqual([
      'key-reused',
      'key-reused',
      'duplicate',
    ]);
    expect(await tally.get(counter)).toBe(2);
  });
});

describe('10. names that mislead a terminal, and the worker metrics address', () => {
  it('refuses format and separator characters in names, in paths and bodies', async () => {
    for (const character of ['\u202e', '\ufeff', '\u2028']) {
      const counter = `invoice${character}fdp.exe`;
      const byPath = await call('GET', `/v1/counters/${encodeURIComponent(counter)}`);
      expect(byPath.status).toBe(400);
      const byBody = await call('POST', '/v1/increments', { increments: [{ counter }] });
      expect(byBody.status).toBe(400);
      expect(byBody.json.error.message).not.toContain(character);
    }
  });

  it('serves worker metrics on loopback unless TALLY_METRICS_HOST says otherwise', async () => {
    const worker = startTallyProcess('worker', storeEnv({ TALLY_METRICS_PORT: '0' }));
    try {
      const metricsPort = await worker.metricsPort();
      expect((await fetch(`http://127.0.0.1:${metricsPort}/healthz`)).status).toBe(200);
      // 127.0.0.2 is this machine too, but not the address the metrics listen on.
      await expect(fetch(`http://127.0.0.2:${metricsPort}/healthz`)).rejects.toThrow();
    } finally {
      worker.kill('SIGTERM');
      await worker.exited;
    }
  });
});
