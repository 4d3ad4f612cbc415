/**
 * How `tally serve` answers what it cannot serve, and how every long-running command fails to
 * start: at once, with the documented exit code, naming what to fix.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:net';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTally, migrate, type Tally } from '../src/index.js';
import { runTypeScript } from './support/child-process.js';
import { rawRequest } from './support/raw-http.js';
import { createDatabase, startRedis, type RedisHandle } from './support/index.js';
import { startTallyProcess, type TallyProcess } from './support/tally-process.js';

const cli = new URL('../src/cli/main.ts', import.meta.url);

let redis: RedisHandle;
let databaseUrl: string;
let tally: Tally;
let server: TallyProcess;
let base: string;
let port: number;

function env(extra: Record<string, string> = {}): Record<string, string> {
  return {
    REDIS_URL: redis.url,
    DATABASE_URL: databaseUrl,
    TALLY_SHARDS: '2',
    TALLY_KEY_PREFIX: 'surface',
    TALLY_LOG_LEVEL: 'info',
    ...extra,
  };
}

beforeAll(async () => {
  redis = await startRedis({ persistence: 'aof-always' });
  databaseUrl = await createDatabase();
  await migrate(databaseUrl);
  tally = await createTally({
    redis: redis.url,
    postgres: databaseUrl,
    shards: 2,
    keyPrefix: 'surface',
    // As the server below: a granularity a later process adds holds nothing from before.
    buckets: ['minute', 'hour'],
  });
  server = startTallyProcess(
    'serve',
    env({ PORT: '0', TALLY_BUCKETS: 'minute,hour', TALLY_MAX_BACKDATE_MS: '3600000' }),
  );
  port = await server.apiPort();
  base = `http://127.0.0.1:${port}`;
});
afterAll(async () => {
  server.kill('SIGTERM');
  await server.exited;
  await tally.close();
  await redis.stop();
});

async function send(path: string, init: RequestInit = {}) {
  const response = await fetch(`${base}${path}`, init);
  const text = await response.text();
  return { status: response.status, headers: response.headers, text, json: JSON.parse(text) };
}

const errorShape = {
  error: { code: expect.any(String) as unknown, message: expect.any(String) as unknown },
};

describe('TALLY_BUCKETS', () => {
  it('sets the granularities the server counts in, and the ones its OpenAPI document offers', async () => {
    await send('/v1/counters/kept/increment', { method: 'POST' });
    const now = Date.now();
    const period = `from=${new Date(now - 120_000).toISOString()}&to=${new Date(now + 1).toISOString()}`;
    const minutes = await send(`/v1/counters/kept/usage?${period}&granularity=minute`);
    expect(minutes.status).toBe(200);
    expect(minutes.json.buckets.at(-1).value).toBe(1);
    expect((await send(`/v1/counters/kept/usage?${period}&granularity=day`)).status).toBe(400);
    const document = (await send('/openapi.json')).json;
    const granularity = document.paths['/v1/counters/{counter}/usage'].get.parameters.find(
      (parameter: { name: string }) => parameter.name === 'granularity',
    );
    expect(granularity.schema.enum).toEqual(['minute', 'hour']);
  });
});

describe('TALLY_MAX_BACKDATE_MS', () => {
  it("sets how far back an increment's at may lie", async () => {
    const at = (minutesAgo: number) => new Date(Date.now() - minutesAgo * 60_000).toISOString();
    const post = (minutesAgo: number) =>
      send('/v1/increments', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ increments: [{ counter: 'late', at: at(minutesAgo) }] }),
      });
    expect((await post(30)).status).toBe(200);
    const tooLate = await post(120);
    expect(tooLate.status).toBe(400);
    expect(tooLate.json.error.message).toMatch(/from 1 hour before now to 5 minutes after/);
  });
});

describe('answers in the documented error shape', () => {
  it('reads and increments names of up to 256 bytes by path', async () => {
    const longest = 'é'.repeat(128); // 256 bytes, 768 characters percent-encoded
    const path = `/v1/counters/${encodeURIComponent(longest)}`;
    expect((await send(`${path}/increment`, { method: 'POST' })).json).toMatchObject({
      value: 1,
    });
    expect((await send(path)).json).toEqual({ counter: longest, value: 1 });
    const now = Date.now();
    const usage = await send(
      `${path}/usage?from=${new Date(now - 3_600_000).toISOString()}&to=${new Date(now + 1).toISOString()}&granularity=hour`,
    );
    expect(usage.status).toBe(200);
    expect(usage.json.buckets.at(-1).value).toBe(1);

    const tooLong = await send(`/v1/counters/${encodeURIComponent('é'.repeat(129))}`);
    expect(tooLong.status).toBe(400);
    expect(tooLong.json).toMatchObject({ error: { code: 'VALIDATION' } });
    const farTooLong = await send(`/v1/counters/${'x'.repeat(2_000)}`);
    expect(farTooLong.status).toBe(414);
    expect(farTooLong.json).toMatchObject({ error: { code: 'URI_TOO_LONG' } });
    expect(farTooLong.text).not.toContain('x'.repeat(100));
  });

  it('bad percent-encoding, unknown paths and oversized headers: the shape, no URL echoed', async () => {
    const badEncoding = await send('/v1/counters/%ZZ<script>');
    expect(badEncoding.status).toBe(400);
    expect(badEncoding.json).toMatchObject(errorShape);
    expect(badEncoding.text).not.toContain('script');
    const unknown = await send('/nowhere/<script>');
    expect(unknown.status).toBe(404);
    expect(unknown.json).toMatchObject({ error: { code: 'NOT_FOUND' } });
    expect(unknown.text).not.toContain('script');

    const huge = await rawRequest(
      port,
      `GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: ${'p'.repeat(20_000)}\r\n\r\n`,
    );
    expect(huge).toMatch(/^HTTP\/1\.1 431/);
    expect(JSON.parse(huge.split('\r\n\r\n')[1] ?? '')).toMatchObject({
      error: { code: 'HEADERS_TOO_LARGE' },
    });
  });

  it('405 with Allow for a wrong method on a known path', async () => {
    const answer = await send('/v1/counters/a', { method: 'PUT' });
    expect(answer.status).toBe(405);
    expect(answer.headers.get('allow')).toBe('GET, DELETE');
    expect(answer.json).toMatchObject({ error: { code: 'METHOD_NOT_ALLOWED' } });
    const increments = await send('/v1/increments', { method: 'GET' });
    expect(increments.status).toBe(405);
    expect(increments.headers.get('allow')).toBe('POST');
  });

  it('415 for a compressed body, which would otherwise reach the JSON parser as bytes', async () => {
    const answer = await send('/v1/increments', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
      body: gzipSync(JSON.stringify({ increments: [{ counter: 'zipped' }] })),
    });
    expect(answer.status).toBe(415);
    expect(answer.json).toMatchObject({ error: { code: 'UNSUPPORTED_MEDIA_TYPE' } });
    expect(await tally.get('zipped')).toBe(0);
  });

  it("the single-counter route's errors are about the counter, not item 0 of a batch", async () => {
    const answer = await send(`/v1/counters/${encodeURIComponent('a\u202eb')}/increment`, {
      method: 'POST',
    });
    expect(answer.status).toBe(400);
    expect(answer.json.error.message).toMatch(/^A counter name/);
    const overflow = await send('/v1/counters/big/increment', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ by: Number.MAX_SAFE_INTEGER }),
    });
    expect(overflow.status).toBe(200);
    const past = await send('/v1/counters/big/increment', { method: 'POST' });
    expect(past.status).toBe(409);
    expect(past.json.error).toMatchObject({
      code: 'OVERFLOW',
      details: { counter: 'big', value: Number.MAX_SAFE_INTEGER },
    });
    expect(past.json.error.message).not.toMatch(/item 0/i);
  });
});

async function listeningServer(): Promise<Server> {
  const taken = createServer();
  taken.listen(0, '127.0.0.1');
  await once(taken, 'listening');
  return taken;
}

function portOf(taken: Server): string {
  const address = taken.address();
  return String(typeof address === 'object' && address !== null ? address.port : 0);
}

describe('a process that cannot start exits at once, with the right code', () => {
  it('exit 2 for a port in use, a port out of range, a host it cannot listen on', async () => {
    const taken = await listeningServer();
    try {
      const cases = [
        { command: 'serve', extra: { PORT: portOf(taken) }, message: /Cannot listen on HOST/ },
        { command: 'serve', extra: { PORT: '99999' }, message: /PORT must be a whole number from 0 to 65535/ },
        { command: 'serve', extra: { PORT: '0', HOST: 'no-such-host.invalid', TALLY_ALLOW_UNAUTHENTICATED: 'yes' }, message: /Cannot listen on HOST no-such-host\.invalid/ },
        { command: 'worker', extra: { TALLY_METRICS_PORT: portOf(taken) }, message: /Cannot serve metrics/ },
      ]; // prettier-ignore
      for (const { command, extra, message } of cases) {
        const result = await runTypeScript(cli, [command], env(extra));
        expect(result.code, `${command} ${JSON.stringify(extra)}`).toBe(2);
        expect(result.stderr).toMatch(message);
      }
    } finally {
      taken.close();
    }
  });

  it('exit 2 for an unknown log level, a malformed URL, a number that is not plain digits', async () => {
    const cases = [
      { extra: { TALLY_LOG_LEVEL: 'loud' }, message: /TALLY_LOG_LEVEL must be one of/ },
      { extra: { REDIS_URL: 'base' }, message: /REDIS_URL is not a valid URL/ },
      { extra: { DATABASE_URL: 'base' }, message: /DATABASE_URL is not a valid URL/ },
      { extra: { REDIS_URL: 'http://127.0.0.1:6379' }, message: /REDIS_URL is not a valid URL/ },
      // A bad %-escape in the password once failed later, inside ioredis, as exit 3.
      {
        extra: { REDIS_URL: 'redis://:bad%zz@127.0.0.1:1' },
        message: /REDIS_URL is not a valid URL/,
      },
      // A cluster's or a Sentinel set's hosts, malformed: refused before anything connects.
      { extra: { REDIS_URL: 'redis+cluster://' }, message: /names no host.*redis\+cluster:/ },
      {
        extra: { REDIS_URL: 'redis+cluster://a:1,b:99999' },
        message: /host 2 of the list is not host:port/,
      },
      {
        extra: { REDIS_URL: 'redis+sentinel://a:26379' },
        message: /ends with \/<name of the primary>/,
      },
      {
        extra: { REDIS_URL: 'redis+sentinel://s3cret-user:hunter2@a/mymaster?foo=1' },
        message: /unknown parameter "foo"/,
      },
      { extra: { TALLY_SHARDS: '0x10' }, message: /TALLY_SHARDS must be a whole number/ },
      { extra: { TALLY_SHARDS: '16.0' }, message: /TALLY_SHARDS must be a whole number/ },
      { extra: { TALLY_SHARDS: '1e1' }, message: /TALLY_SHARDS must be a whole number/ },
      { extra: { TALLY_BUCKETS: 'hour,week' }, message: /TALLY_BUCKETS has "week"/ },
    ];
    for (const command of ['serve', 'worker']) {
      for (const { extra, message } of cases) {
        const result = await runTypeScript(cli, [command], env(extra));
        expect(result.code, `${command} ${JSON.stringify(extra)}`).toBe(2);
        expect(result.stderr, `${command} ${JSON.stringify(extra)}`).toMatch(message);
        expect(result.stderr).not.toContain('hunter2');
      }
    }
    const flag = await runTypeScript(cli, ['status', '--shards', '1e1'], env());
    expect(flag.code).toBe(2);
    expect(flag.stderr).toMatch(/--shards \(TALLY_SHARDS\) must be a whole number/);
    // The worker's pruning settings: a retention the horizon rule cannot work with, and an
    // interval Node's timers would fire at once.
    for (const [name, value] of [
      ['TALLY_LEDGER_RETENTION_MS', '1000'],
      ['TALLY_LEDGER_PRUNE_INTERVAL_MS', '2147483648'],
    ]) {
      const result = await runTypeScript(cli, ['worker'], env({ [name ?? '']: value ?? '' }));
      expect(result.code, name).toBe(2);
      expect(result.stderr, name).toMatch(new RegExp(`${name ?? ''} must be a whole number from`));
    }
    const shardFlag = await runTypeScript(cli, ['reconcile', '--shard', '0x3'], env());
    expect(shardFlag.code).toBe(2);
    expect(shardFlag.stderr).toMatch(/A shard is a whole number from 0, got "0x3"/);
  });

  it('exit 2 for a TALLY_RETENTION that is not one', async () => {
    const cases = [
      {
        command: 'serve',
        value: 'minute=7w',
        message: /TALLY_RETENTION\.minute is "7w"; write a duration/,
      },
      {
        command: 'worker',
        value: 'hour',
        message: /TALLY_RETENTION must read like minute=7d,hour=90d/,
      },
    ];
    for (const { command, value, message } of cases) {
      const result = await runTypeScript(cli, [command], env({ TALLY_RETENTION: value }));
      expect(result.code, `${command} ${value}`).toBe(2);
      expect(result.stderr, `${command} ${value}`).toMatch(message);
    }
  });

  it('exit 3 naming the server that cannot be reached', async () => {
    const redisDown = await runTypeScript(
      cli,
      ['serve'],
      env({ REDIS_URL: 'redis://127.0.0.1:1' }),
    );
    expect(redisDown.code).toBe(3);
    expect(redisDown.stderr).toMatch(
      /Redis \(REDIS_URL\) could not be reached: connect ECONNREFUSED/,
    );
    const postgresDown = await runTypeScript(
      cli,
      ['serve'],
      env({ DATABASE_URL: 'postgres://postgres@127.0.0.1:1/x' }),
    );
    expect(postgresDown.code).toBe(3);
    expect(postgresDown.stderr).toMatch(/PostgreSQL \(DATABASE_URL\) could not be reached/);
  });
});
