import { randomBytes } from 'node:crypto';
import { validate } from '@readme/openapi-parser';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTally, migrate, type Tally } from '../src/index.js';
import { createDatabase, startRedis, waitFor, type RedisHandle } from './support/index.js';
import { startTallyProcess, type TallyProcess } from './support/tally-process.js';

let redis: RedisHandle;
let databaseUrl: string;
let tally: Tally;
let open: TallyProcess;
let guarded: TallyProcess;
let openUrl: string;
let guardedUrl: string;
const keyPrefix = `api${randomBytes(3).toString('hex')}`;
const firstToken = 'first-token-0123456789';
const secondToken = 'second-token-0123456789';

function serverEnv(extra: Record<string, string> = {}) {
  return {
    REDIS_URL: redis.url,
    DATABASE_URL: databaseUrl,
    PORT: '0',
    TALLY_SHARDS: '4',
    TALLY_KEY_PREFIX: keyPrefix,
    TALLY_LOG_LEVEL: 'info',
    ...extra,
  };
}

beforeAll(async () => {
  redis = await startRedis({ persistence: 'aof-always' });
  databaseUrl = await createDatabase();
  await migrate(databaseUrl);
  tally = await createTally({ redis: redis.url, postgres: databaseUrl, shards: 4, keyPrefix });
  open = startTallyProcess('serve', serverEnv());
  guarded = startTallyProcess(
    'serve',
    serverEnv({ TALLY_API_TOKEN: `${firstToken}, ${secondToken}` }),
  );
  openUrl = `http://127.0.0.1:${await open.apiPort()}`;
  guardedUrl = `http://127.0.0.1:${await guarded.apiPort()}`;
});
afterAll(async () => {
  for (const server of [open, guarded]) {
    server.kill('SIGTERM');
    await server.exited;
  }
  await tally.close();
  await redis.stop();
});

async function call(
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
  base = openUrl,
): Promise<{ status: number; json: any }> {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  });
  const text = await response.text();
  return { status: response.status, json: text === '' ? undefined : JSON.parse(text) };
}

/** A store of its own, for a server with its own key prefix (a store's prefix is fixed). */
async function ownDatabase(): Promise<string> {
  const url = await createDatabase();
  await migrate(url);
  return url;
}

const name = (base: string) => `${base}-${randomBytes(4).toString('hex')}`;

describe('routes', () => {
  it('increments in a batch and one at a time, and reads back', async () => {
    const a = name('a/b c');
    const b = name('b');
    const batch = await call('POST', '/v1/increments', {
      increments: [
        { counter: a, by: 3 },
        { counter: b },
        { counter: a, by: 2, idempotencyKey: 'k1' },
        { counter: a, by: 2, idempotencyKey: 'k1' },
        { counter: b, by: 5, limit: 3 },
      ],
    });
    expect(batch.status).toBe(200);
    expect(batch.json.results).toEqual([
      { counter: a, value: 3, duplicate: false, status: 'applied' },
      { counter: b, value: 1, duplicate: false, status: 'applied' },
      { counter: a, value: 5, duplicate: false, status: 'applied' },
      { counter: a, value: 5, duplicate: true, status: 'duplicate' },
      {
        counter: b,
        value: 1,
        duplicate: false,
        status: 'over-limit',
        limit: 3,
        usage: 1,
        remaining: 2,
        periodStart: null,
        resetAt: null,
        limitExceeded: false,
      },
    ]);

    const one = await call('POST', `/v1/counters/${encodeURIComponent(a)}/increment`, { by: 10 });
    expect(one).toEqual({
      status: 200,
      json: { counter: a, value: 15, duplicate: false, status: 'applied' },
    });
    const bare = await call('POST', `/v1/counters/${encodeURIComponent(b)}/increment`);
    expect(bare.json.value).toBe(2);

    expect(await call('GET', `/v1/counters/${encodeURIComponent(a)}`)).toEqual({
      status: 200,
      json: { counter: a, value: 15 },
    });
    const never = name('never');
    expect((await call('GET', `/v1/counters/${encodeURIComponent(never)}`)).json.value).toBe(0);
    expect(await call('POST', '/v1/counters:read', { counters: [a, b, never] })).toEqual({
      status: 200,
      json: { values: { [a]: 15, [b]: 2, [never]: 0 } },
    });
  });

  it('answers usage over flushed and not-yet-flushed hours exactly', async () => {
    const u = name('usage');
    // Yesterday's hours: inside the window `at` is accepted in (35 days back by default).
    const day = Math.floor(Date.now() / 86_400_000 - 1) * 86_400_000;
    const hour = (h: number) => new Date(day + h * 3_600_000 + 15 * 60_000).toISOString();
    await call('POST', '/v1/increments', {
      increments: [
        { counter: u, by: 1, at: hour(0) },
        { counter: u, by: 2, at: hour(1) },
        { counter: u, by: 3, at: hour(2) },
      ],
    });
    await tally.flush();
    await call('POST', '/v1/increments', {
      increments: [
        { counter: u, by: 4, at: hour(2) },
        { counter: u, by: 5, at: hour(3) },
      ],
    });
    const from = new Date(day).toISOString();
    const to = new Date(day + 5 * 3_600_000).toISOString();
    const usage = await call(
      'GET',
      `/v1/counters/${encodeURIComponent(u)}/usage?from=${from}&to=${to}&granularity=hour`,
    );
    expect(usage.status).toBe(200);
    expect(usage.json.buckets.map((bucket: { value: number }) => bucket.value)).toEqual([
      1, 2, 7, 5, 0,
    ]);
    expect(usage.json.buckets[2].start).toBe(new Date(day + 2 * 3_600_000).toISOString());
  });

  it('serves health, readiness with durability, metrics and the OpenAPI document', async () => {
    expect((await call('GET', '/healthz')).status).toBe(200);
    const ready = await call('GET', '/readyz');
    expect(ready.status).toBe(200);
    expect(ready.json).toMatchObject({
      ready: true,
      redis: true,
      postgres: true,
      shardsReconciled: '4/4',
      durability: { appendonly: true, appendfsync: 'always', durable: true },
    });
    const metrics = await (await fetch(`${openUrl}/metrics`)).text();
    expect(metrics).toMatch(
      /tally_http_requests_total\{method="POST",route="\/v1\/increments",status="200"\} \d+/,
    );
    expect(metrics).toContain('tally_http_request_duration_seconds_bucket');
    expect(metrics).toMatch(/tally_increments_total\{status="applied"\} \d+/);
  });

  it('publishes a valid OpenAPI 3 document that lists every route', async () => {
    const { json: document } = await call('GET', '/openapi.json');
    await expect(validate(structuredClone(document))).resolves.toMatchObject({ valid: true });
    expect(Object.keys(document.paths).sort()).toEqual([
      '/v1/counters',
      '/v1/counters/{counter}',
      '/v1/counters/{counter}/increment',
      '/v1/counters/{counter}/usage',
      '/v1/counters:delete',
      '/v1/counters:read',
      '/v1/increments',
      '/v1/labels/{label}/values',
      '/v1/usage',
      '/v1/usage:query',
    ]);
    expect(Object.keys(document.paths['/v1/counters/{counter}']).sort()).toEqual(['delete', 'get']);
    // A usage query answers JSON or CSV.
    expect(
      Object.keys(document.paths['/v1/usage:query'].post.responses['200'].content).sort(),
    ).toEqual(['application/json', 'text/csv']);
    expect(document.paths['/v1/increments'].post.responses['200']).toBeDefined();
    // A POST without a body counts 1: the body is optional.
    expect(document.paths['/v1/counters/{counter}/increment'].post.requestBody.required).toBe(
      false,
    );
    // Only the granularities the store keeps (hour and day by default) can be asked for.
    const granularity = document.paths['/v1/counters/{counter}/usage'].get.parameters.find(
      (parameter: { name: string }) => parameter.name === 'granularity',
    );
    expect(granularity.schema.enum).toEqual(['hour', 'day']);
    const minutes = await call(
      'GET',
      `/v1/counters/a/usage?from=2026-01-01T00:00:00Z&to=2026-01-01T01:00:00Z&granularity=minute`,
    );
    expect(minutes.status).toBe(400);
    expect(minutes.json.error.message).toMatch(/allowed values \(hour, day\)/);
  });

  it('takes labelled counters as the library does, named by their canonical name', async () => {
    const tenant = name('acme');
    const ref = { name: 'requests', labels: { tenant, route: '/search', cached: false } };
    const canonical = `requests{cached="false",route="/search",tenant="${tenant}"}`;
    const batch = await call('POST', '/v1/increments', {
      increments: [{ counter: ref, by: 2 }, { counter: canonical }],
    });
    expect(batch.status).toBe(200);
    expect(
      batch.json.results.map((r: { counter: string; value: number }) => [r.counter, r.value]),
    ).toEqual([
      [canonical, 2],
      [canonical, 3],
    ]);
    expect((await call('GET', `/v1/counters/${encodeURIComponent(canonical)}`)).json.value).toBe(3);
    expect((await call('POST', '/v1/counters:read', { counters: [ref] })).json).toEqual({
      values: { [canonical]: 3 },
    });
    expect(await tally.get(ref)).toBe(3);
    const badLabel = await call('POST', '/v1/increments', {
      increments: [{ counter: { name: 'requests', labels: { 'bad-key': 'x' } } }],
    });
    expect(badLabel.status).toBe(400);
  });
});

describe('errors', () => {
  it('400: the batch is validated whole, names the item and field, and applies nothing', async () => {
    const c = name('whole');
    const schemaError = await call('POST', '/v1/increments', {
      increments: [
        { counter: c, by: 1 },
        { counter: c, by: 'two' },
      ],
    });
    expect(schemaError.status).toBe(400);
    expect(schemaError.json.error).toMatchObject({
      code: 'VALIDATION',
      details: [{ path: '/increments/1/by' }],
    });
    // Within the schema's 256 characters but 512 bytes of UTF-8: refused by the engine.
    const engineError = await call('POST', '/v1/increments', {
      increments: [{ counter: c, by: 1 }, { counter: 'é'.repeat(256) }],
    });
    expect(engineError.status).toBe(400);
    expect(engineError.json.error).toMatchObject({ code: 'VALIDATION', details: { index: 1 } });
    expect((await call('GET', `/v1/counters/${encodeURIComponent(c)}`)).json.value).toBe(0);

    for (const body of [
      '{bad json',
      '[]',
      '{"increments":[]}',
      '{"increments":[{"counter":"x","by":1.5}]}',
      '{"increments":[{"counter":"x","extra":1}]}',
      '{"increments":[{"counter":"x","by":1e400}]}',
      '{"increments":[{"counter":"x","by":12345678901234567890}]}',
      '{"increments":[{"counter":"x","at":"yesterday"}]}',
    ]) {
      const answer = await call('POST', '/v1/increments', body);
      expect(answer.status, body).toBe(400);
      expect(answer.json.error.code, body).toBe('VALIDATION');
    }
    const badUsage = await call(
      'GET',
      `/v1/counters/x/usage?from=nope&to=2026-01-01T00:00:00Z&granularity=hour`,
    );
    expect(badUsage.status).toBe(400);
    const tooMany = await call('POST', '/v1/increments', {
      increments: Array.from({ length: 1001 }, () => ({ counter: 'x' })),
    });
    expect(tooMany.status).toBe(400);
  });

  it('401 without a valid token when tokens are set; every listed token works', async () => {
    const c = name('auth');
    const path = `/v1/counters/${encodeURIComponent(c)}`;
    for (const headers of [{}, { authorization: 'Bearer wrong' }, { authorization: firstToken }]) {
      const answer = await call('GET', path, undefined, headers, guardedUrl);
      expect(answer.status).toBe(401);
      expect(answer.json.error.code).toBe('UNAUTHORIZED');
    }
    for (const token of [firstToken, secondToken]) {
      const answer = await call(
        'GET',
        path,
        undefined,
        { authorization: `Bearer ${token}` },
        guardedUrl,
      );
      expect(answer.status).toBe(200);
    }
    // Health and metrics stay open for probes.
    expect((await call('GET', '/healthz', undefined, {}, guardedUrl)).status).toBe(200);
  });

  it('409 over the limit or past the value range, changing nothing', async () => {
    const c = name('limited');
    const path = `/v1/counters/${encodeURIComponent(c)}/increment`;
    expect((await call('POST', path, { by: 5, limit: 5 })).status).toBe(200);
    const over = await call('POST', path, { by: 1, limit: 5 });
    expect(over.status).toBe(409);
    expect(over.json.error).toMatchObject({ code: 'OVER_LIMIT', details: { value: 5, limit: 5 } });
    const big = await call('POST', path, { by: Number.MAX_SAFE_INTEGER });
    expect(big.status).toBe(409);
    expect(big.json.error.code).toBe('OVERFLOW');
    expect((await call('GET', `/v1/counters/${encodeURIComponent(c)}`)).json.value).toBe(5);
  });

  it('a periodic quota: RateLimit headers, 409 by default, 429 with Retry-After when asked', async () => {
    const c = name('quota');
    const path = `/v1/counters/${encodeURIComponent(c)}/increment`;
    // One instant for every request: the period cannot change under the test at midnight.
    const at = new Date().toISOString();
    const limit = { max: 3, per: 'day' };
    const post = async (body: object): Promise<{ status: number; headers: Headers; json: any }> => {
      const response = await fetch(`${openUrl}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ at, limit, ...body }),
      });
      return { status: response.status, headers: response.headers, json: await response.json() };
    };
    const first = await post({ by: 2 });
    expect(first.status).toBe(200);
    const resetAt = Date.parse(first.json.resetAt);
    expect(first.json).toMatchObject({ status: 'applied', limit: 3, usage: 2, remaining: 1 });
    expect(resetAt - Date.parse(first.json.periodStart)).toBe(86_400_000);
    expect(first.headers.get('ratelimit-policy')).toBe('"day";q=3;w=86400');
    const state = /^"day";r=1;t=(\d+)$/.exec(first.headers.get('ratelimit') ?? '');
    expect(Number(state?.[1])).toBeCloseTo((resetAt - Date.now()) / 1000, -1);

    const refused = await post({ by: 2 });
    expect(refused.status).toBe(409);
    expect(refused.json.error).toMatchObject({
      code: 'OVER_LIMIT',
      details: { counter: c, usage: 2, remaining: 1, resetAt: first.json.resetAt },
    });
    expect(refused.headers.get('ratelimit')).toMatch(/^"day";r=1;t=\d+$/);
    const tooMany = await post({ by: 2, overLimitStatus: 429 });
    expect(tooMany.status).toBe(429);
    expect(tooMany.json.error.code).toBe('OVER_LIMIT');
    expect(Number(tooMany.headers.get('retry-after'))).toBeCloseTo(
      (resetAt - Date.now()) / 1000,
      -1,
    );
    // A period that has ended never resets for its increments: 409 even when 429 is asked for.
    const yesterday = new Date(Date.parse(at) - 86_400_000).toISOString();
    expect((await post({ at: yesterday, by: 3 })).status).toBe(200);
    const ended = await post({ at: yesterday, by: 1, overLimitStatus: 429 });
    expect([ended.status, ended.headers.get('retry-after')]).toEqual([409, null]);
    // A cap on the total is final too.
    const capped = await post({ by: 9, limit: 5, overLimitStatus: 429 });
    expect(capped.status).toBe(409);
    expect(capped.headers.get('ratelimit-policy')).toBe('"total";q=5');
    expect(capped.headers.get('retry-after')).toBeNull();

    const checked = await post({ by: 1, check: true });
    // The total holds yesterday's 3 too; today's period only its own 2.
    expect(checked.json).toMatchObject({ status: 'allowed', value: 5, usage: 2 });
    for (const bad of [
      { limit: { max: 3, per: 'week' } },
      { limit: { max: 3, per: 'day', timeZone: 'Asia/Kolkata' } },
      { limit: { max: 3, per: 'day', extra: true } },
      { check: 'yes' },
      { overLimitStatus: 503 },
    ]) {
      const answer = await post(bad);
      expect([JSON.stringify(bad), answer.status, answer.json.error.code]).toEqual([
        JSON.stringify(bad),
        400,
        'VALIDATION',
      ]);
    }
    expect((await call('GET', `/v1/counters/${encodeURIComponent(c)}`)).json.value).toBe(5);
  });

  it('deletes a counter or a selection, after a dry run, recording the token that asked', async () => {
    const gone = name('gone');
    const tenant = name('tenant');
    const auth = { authorization: `Bearer ${secondToken}` };
    const post = (counter: unknown, by: number) =>
      call('POST', '/v1/increments', { increments: [{ counter, by }] }, auth, guardedUrl);
    await post(gone, 5);
    await post({ name: 'calls', labels: { tenant, route: '/a' } }, 2);
    await post({ name: 'calls', labels: { tenant, route: '/b' } }, 3);
    const path = `/v1/counters/${encodeURIComponent(gone)}`;
    expect((await call('DELETE', path, undefined, {}, guardedUrl)).status).toBe(401);
    expect(await call('DELETE', `${path}?dryRun=true`, undefined, auth, guardedUrl)).toEqual({
      status: 200,
      json: { deletionId: null, counters: 1, names: [gone], dryRun: true },
    });
    expect((await call('GET', path, undefined, auth, guardedUrl)).json.value).toBe(5);
    const deleted = await call('DELETE', path, undefined, auth, guardedUrl);
    expect(deleted.json).toMatchObject({ counters: 1, names: [gone], dryRun: false });
    expect((await call('GET', path, undefined, auth, guardedUrl)).json.value).toBe(0);

    const selection = await call(
      'POST',
      '/v1/counters:delete',
      { counter: 'calls', where: { tenant } },
      auth,
      guardedUrl,
    );
    expect(selection.json).toMatchObject({ counters: 2, dryRun: false });
    const listed = await call(
      'GET',
      `/v1/counters?counter=calls&where=tenant=${tenant}`,
      undefined,
      auth,
      guardedUrl,
    );
    expect(listed.json.counters).toEqual([]);
    const bad = await call('POST', '/v1/counters:delete', { prefix: '' }, auth, guardedUrl);
    expect([bad.status, bad.json.error.code]).toEqual([400, 'VALIDATION']);
    const unknown = await call(
      'POST',
      '/v1/counters:delete',
      { counter: 'calls', all: true },
      auth,
      guardedUrl,
    );
    expect(unknown.status).toBe(400);

    const pool = new pg.Pool({ connectionString: databaseUrl });
    try {
      const { rows } = await pool.query<{ requested_by: string; counters: string }>(
        'SELECT requested_by, counters FROM tally.counter_deletions ORDER BY id',
      );
      expect(rows).toEqual([
        { requested_by: 'http:token-2@127.0.0.1', counters: '1' },
        { requested_by: 'http:token-2@127.0.0.1', counters: '2' },
      ]);
    } finally {
      await pool.end();
    }
  });

  it('a body sent without a content type, or a JSON null, is refused, not taken for no body', async () => {
    const c = name('nobody');
    const path = `/v1/counters/${encodeURIComponent(c)}/increment`;
    const untyped = await fetch(`${openUrl}${path}`, {
      method: 'POST',
      body: Buffer.from('{"by":5}'), // a Buffer body: fetch sends no content type
    });
    expect(untyped.status).toBe(415);
    const nullBody = await call('POST', path, 'null');
    expect(nullBody.status).toBe(400);
    expect((await call('GET', `/v1/counters/${encodeURIComponent(c)}`)).json.value).toBe(0);
  });

  it('413 for a body over the limit, 415 for a body that is not JSON, 404 elsewhere', async () => {
    const huge = await call(
      'POST',
      '/v1/increments',
      JSON.stringify({ increments: [{ counter: 'x'.repeat(2_000_000) }] }),
    );
    expect(huge.status).toBe(413);
    expect(huge.json.error.code).toBe('PAYLOAD_TOO_LARGE');
    const response = await fetch(`${openUrl}/v1/increments`, {
      method: 'POST',
      headers: { 'content-type': 'text/plain' },
      body: 'counter=x',
    });
    expect(response.status).toBe(415);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe(
      'UNSUPPORTED_MEDIA_TYPE',
    );
    expect((await call('GET', '/v1/nothing-here')).json.error.code).toBe('NOT_FOUND');
  });

  it('remembers idempotency keys for TALLY_IDEMPOTENCY_WINDOW_MS, no longer', async () => {
    const server = startTallyProcess(
      'serve',
      serverEnv({
        DATABASE_URL: await ownDatabase(),
        TALLY_KEY_PREFIX: 'window',
        TALLY_IDEMPOTENCY_WINDOW_MS: '1500',
      }),
    );
    try {
      const base = `http://127.0.0.1:${await server.apiPort()}`;
      const send = () =>
        call('POST', '/v1/counters/w/increment', { by: 1, idempotencyKey: 'k' }, {}, base);
      expect((await send()).json).toMatchObject({ value: 1, duplicate: false });
      expect((await send()).json).toMatchObject({ value: 1, duplicate: true });
      // The key lives TALLY_IDEMPOTENCY_WINDOW_MS in Redis; wait for Redis to let it go.
      const raw = new Redis(redis.url);
      try {
        const [, [key]] = await raw.scan('0', 'MATCH', 'window:*:idem:*', 'COUNT', 1_000);
        expect(await raw.pttl(key ?? '')).toBeGreaterThan(0);
        await waitFor('the key to expire', async () =>
          (await raw.exists(key ?? '')) === 0 ? true : undefined,
        );
      } finally {
        raw.disconnect();
      }
      // Past the window the key is forgotten: the same request counts again.
      expect((await send()).json).toMatchObject({ value: 2, duplicate: false });
    } finally {
      server.kill('SIGTERM');
      await server.exited;
    }
  });

  it('503 when Redis is unavailable; the same request succeeds once it is back', async () => {
    const ownRedis = await startRedis({ persistence: 'aof-always' });
    const server = startTallyProcess(
      'serve',
      serverEnv({
        REDIS_URL: ownRedis.url,
        DATABASE_URL: await ownDatabase(),
        TALLY_KEY_PREFIX: 'down',
      }),
    );
    try {
      const base = `http://127.0.0.1:${await server.apiPort()}`;
      const path = '/v1/counters/c/increment';
      expect((await call('POST', path, { by: 1, idempotencyKey: 'r1' }, {}, base)).status).toBe(
        200,
      );
      await ownRedis.kill('SIGSTOP');
      const down = await call('POST', path, { by: 1, idempotencyKey: 'r2' }, {}, base);
      expect(down.status).toBe(503);
      expect(['OUTCOME_UNKNOWN', 'UNAVAILABLE']).toContain(down.json.error.code);
      expect((await call('GET', '/readyz', undefined, {}, base)).status).toBe(503);
      await ownRedis.kill('SIGCONT');
      // The retry with the same key counts once, whether or not the first attempt had counted.
      const retried = await waitFor('the retry to succeed', async () => {
        const answer = await call('POST', path, { by: 1, idempotencyKey: 'r2' }, {}, base);
        return answer.status === 200 ? answer : undefined;
      });
      expect(retried.json.value).toBe(2);
    } finally {
      server.kill('SIGTERM');
      await server.exited;
      await ownRedis.stop();
    }
  });
});

describe('retries and shutdown', () => {
  it('20 clients retrying every request once with the same idempotency keys: totals exact', async () => {
    const counters = Array.from({ length: 5 }, (_, i) => name(`retry${i}`));
    const expected = new Map(counters.map((c) => [c, 0]));
    await Promise.all(
      Array.from({ length: 20 }, async (_, client) => {
        for (let request = 0; request < 25; request++) {
          const counter = counters[(client + request) % counters.length] as string;
          const by = (request % 3) + 1;
          const body = { increments: [{ counter, by, idempotencyKey: `c${client}-r${request}` }] };
          const first = await call('POST', '/v1/increments', body);
          const retry = await call('POST', '/v1/increments', body);
          expect(first.status).toBe(200);
          expect(retry.json.results[0].status).toBe('duplicate');
          expected.set(counter, (expected.get(counter) ?? 0) + by);
        }
      }),
    );
    const read = await call('POST', '/v1/counters:read', { counters });
    expect(read.json.values).toEqual(Object.fromEntries(expected));
  });

  it('SIGTERM: finishes the requests in flight and exits 0', async () => {
    const server = startTallyProcess('serve', serverEnv());
    const base = `http://127.0.0.1:${await server.apiPort()}`;
    const c = name('drain');
    const inFlight = Array.from({ length: 50 }, () =>
      call('POST', `/v1/counters/${encodeURIComponent(c)}/increment`, { by: 1 }, {}, base),
    );
    await new Promise((resolve) => setTimeout(resolve, 5));
    server.kill('SIGTERM');
    const answers = await Promise.allSettled(inFlight);
    expect((await server.exited).code).toBe(0);
    const accepted = answers.filter(
      (a) => a.status === 'fulfilled' && a.value.status === 200,
    ).length;
    // Every request that got an answer was counted, and nothing else.
    expect(await tally.get(c)).toBe(accepted);
  });
});
