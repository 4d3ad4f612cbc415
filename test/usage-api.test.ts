/**
 * The usage routes over HTTP: JSON pages, the GET link form, CSV streamed and parsed back,
 * listings, refusals (400, nothing else happens), tokens, and the cap on queries at once.
 */
import { request as httpRequest } from 'node:http';
import { parse } from 'csv-parse/sync';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi } from '../src/server/api.js';
import type { Tally } from '../src/index.js';
import { createDatabase, startRedis, waitFor, type RedisHandle } from './support/index.js';
import { tallyOn } from './support/tally-store.js';

let redis: RedisHandle;
let tally: Tally;
let base: string;
let close: () => Promise<void>;
const token = 'usage-token-0123456789';
const at = Date.parse('2026-11-10T12:00:00Z');
const tenants = ['acme', 'globex', 'with,comma', 'with "quote"', ''];

beforeAll(async () => {
  redis = await startRedis();
  tally = await tallyOn(redis.url, await createDatabase(), { shards: 4 });
  // Some flushed, some pending: the answers hold both.
  for (const [i, tenant] of tenants.entries()) {
    await tally.incr({ name: 'api_calls', labels: { tenant, region: 'eu' } }, i + 1, { at });
  }
  await tally.flush();
  for (const [i, tenant] of tenants.entries()) {
    await tally.incr({ name: 'api_calls', labels: { tenant, region: 'us' } }, 10 * (i + 1), {
      at: at + 86_400_000,
    });
  }
  await tally.incr({ name: 'api_calls', labels: { region: 'eu' } }, 7, { at }); // no tenant
  await tally.incr('plain:a', 3, { at });
  const app = await buildApi({
    tally,
    tokens: [token],
    maxConcurrentQueries: 1,
    exportIdleTimeoutMs: 1_000,
    logger: pino({ level: 'silent' }),
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  base = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`;
  close = () => app.close();
});
afterAll(async () => {
  await close();
  await tally.close();
  await redis.stop();
});

const auth = { authorization: `Bearer ${token}` };

async function post(body: unknown, headers: Record<string, string> = {}) {
  return fetch(`${base}/v1/usage:query`, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
}

const november = {
  counter: 'api_calls',
  groupBy: ['tenant'],
  from: '2026-11-01',
  to: '2026-12-01',
  granularity: 'day',
} as const;

describe('usage over HTTP', () => {
  it('answers a JSON page, and the same rows as a GET link', async () => {
    const response = await post({ ...november, granularity: 'month' });
    expect(response.status).toBe(200);
    const page = (await response.json()) as { rows: unknown[]; nextCursor: string | null };
    expect(page).toEqual({
      rows: [
        {
          labels: { tenant: null },
          value: 7,
          buckets: [{ start: '2026-11-01T00:00:00.000Z', value: 7 }],
        },
        ...['', 'acme', 'globex', 'with "quote"', 'with,comma'].map((tenant) => {
          const value = 11 * (tenants.indexOf(tenant) + 1);
          return {
            labels: { tenant },
            value,
            buckets: [{ start: '2026-11-01T00:00:00.000Z', value }],
          };
        }),
      ],
      nextCursor: null,
    });
    const link = await fetch(
      `${base}/v1/usage?counter=api_calls&groupBy=tenant&from=2026-11-01&to=2026-12-01&granularity=month`,
      { headers: auth },
    );
    expect(await link.json()).toEqual(page);
    const filtered = await fetch(
      `${base}/v1/usage?counter=api_calls&where=tenant=acme&where=tenant=globex&where=region=us` +
        '&groupBy=region,tenant&from=2026-11-01&to=2026-12-01&granularity=total&orderBy=value',
      { headers: auth },
    );
    expect(((await filtered.json()) as { rows: unknown[] }).rows).toEqual([
      {
        labels: { region: 'us', tenant: 'globex' },
        value: 20,
        buckets: [{ start: '2026-11-01T00:00:00.000Z', value: 20 }],
      },
      {
        labels: { region: 'us', tenant: 'acme' },
        value: 10,
        buckets: [{ start: '2026-11-01T00:00:00.000Z', value: 10 }],
      },
    ]);
  });

  it('streams CSV that parses back to the JSON rows', async () => {
    for (const query of [
      november,
      { ...november, granularity: 'total' as const },
      { prefix: 'plain:', from: '2026-11-01', to: '2026-12-01', granularity: 'day' as const },
    ]) {
      const json = (await (await post({ ...query, limit: (10_000 / 31) | 0 })).json()) as {
        rows: {
          counter?: string;
          labels: Record<string, string | null>;
          value: number;
          buckets: { start: string; value: number }[];
        }[];
      };
      const response = await post(query, { accept: 'text/csv' });
      expect(response.status).toBe(200);
      expect(response.headers.get('content-type')).toBe('text/csv; charset=utf-8');
      const text = await response.text();
      // null (no such label) is an empty field, '' is "": kept apart when read back.
      const records = parse<Record<string, string | null>>(text, {
        columns: true,
        cast: (value, context) => (context.quoting || value !== '' ? value : null),
      });
      const total = query.granularity === 'total';
      const expected = json.rows.flatMap((row) => {
        const identity = row.counter !== undefined ? { counter: row.counter } : row.labels;
        return total
          ? [{ ...identity, value: String(row.value) }]
          : row.buckets.map((bucket) => ({
              ...identity,
              bucket_start: bucket.start,
              value: String(bucket.value),
            }));
      });
      expect(records).toEqual(expected);
      expect(text.split('\r\n')[0]).toBe(
        'prefix' in query
          ? 'counter,bucket_start,value'
          : total
            ? 'tenant,value'
            : 'tenant,bucket_start,value',
      );
    }
  });

  it('lists counters and label values, Redis-only ones included', async () => {
    const counters = await fetch(`${base}/v1/counters?counter=api_calls&where=region=us&limit=2`, {
      headers: auth,
    });
    const first = (await counters.json()) as {
      counters: { name: string; labels: unknown }[];
      nextCursor: string;
    };
    expect(first.counters).toEqual([
      { name: 'api_calls{region="us",tenant=""}', labels: { region: 'us', tenant: '' } },
      { name: 'api_calls{region="us",tenant="acme"}', labels: { region: 'us', tenant: 'acme' } },
    ]);
    const next = await fetch(
      `${base}/v1/counters?counter=api_calls&where=region=us&limit=2&cursor=${first.nextCursor}`,
      { headers: auth },
    );
    expect(
      ((await next.json()) as { counters: { name: string }[] }).counters.map((c) => c.name),
    ).toEqual([
      'api_calls{region="us",tenant="globex"}',
      'api_calls{region="us",tenant="with \\"quote\\""}',
    ]);
    const plain = await fetch(`${base}/v1/counters?prefix=plain:`, { headers: auth });
    expect(await plain.json()).toEqual({
      counters: [{ name: 'plain:a', labels: {} }],
      nextCursor: null,
    });
    const values = await fetch(`${base}/v1/labels/tenant/values?counter=api_calls&prefix=with`, {
      headers: auth,
    });
    expect(await values.json()).toEqual({
      values: ['with "quote"', 'with,comma'],
      nextCursor: null,
    });
  });

  it('refuses bad input with 400 and a message that says what to change', async () => {
    const cases: [unknown, RegExp][] = [
      [{ ...november, granularity: 'week' }, /granularity/],
      [{ ...november, from: '2026-12-01', to: '2026-11-01' }, /from < to/],
      [{ ...november, timeZone: 'Mars/Olympus' }, /not an IANA time zone/],
      [{ ...november, groupBy: ['tenant id'] }, /groupBy/],
      [{ ...november, granularity: 'hour', limit: 500 }, /lower limit/],
      [{ ...november, cursor: 'x' }, /cursor is not a nextCursor/],
      [{ ...november, timeZone: 'Asia/Kolkata' }, /option buckets/],
      [{ ...november, extra: 1 }, /additional properties/],
      [{ ...november, prefix: 'p' }, /either counter/],
    ];
    for (const [body, message] of cases) {
      const response = await post(body);
      const answer = (await response.json()) as { error: { code: string; message: string } };
      expect([response.status, answer.error.code]).toEqual([400, 'VALIDATION']);
      expect(answer.error.message).toMatch(message);
    }
    // JSON unless CSV is preferred.
    for (const [accept, type] of [
      ['text/csv;q=0.1, application/json', 'application/json; charset=utf-8'],
      ['text/csv, */*;q=0.5', 'text/csv; charset=utf-8'],
      ['text/csv;q=0', 'application/json; charset=utf-8'],
    ] as const) {
      const answer = await post(november, { accept });
      expect([accept, answer.headers.get('content-type')]).toEqual([accept, type]);
      await answer.text();
    }
    // Before a CSV export starts, too.
    const csv = await post({ ...november, timeZone: 'Mars/Olympus' }, { accept: 'text/csv' });
    expect(csv.status).toBe(400);
    const link = await fetch(
      `${base}/v1/usage?counter=api_calls&where=tenant&from=2026-11-01&to=2026-12-01&granularity=day`,
      { headers: auth },
    );
    expect(link.status).toBe(400);
    expect(((await link.json()) as { error: { message: string } }).error.message).toMatch(
      /must be label=value/,
    );
    const unauthenticated = await fetch(
      `${base}/v1/usage?counter=api_calls&from=2026-11-01&to=2026-12-01&granularity=day`,
    );
    expect(unauthenticated.status).toBe(401);
  });

  it('answers 503 BUSY past its queries at once, and cuts an export its client stopped reading', async () => {
    for (let i = 0; i < 2_000; i++) {
      await tally.incr({ name: 'bulk', labels: { n: i } }, 1, { at });
    }
    // An export read slowly: its response stays open, holding the only slot.
    const held = await new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
      const request = httpRequest(`${base}/v1/usage:query`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json', accept: 'text/csv' },
      });
      request.on('response', resolve).on('error', reject);
      request.end(
        JSON.stringify({
          counter: 'bulk',
          groupBy: ['n'],
          from: '2026-11-01',
          to: '2026-12-01',
          granularity: 'hour',
        }),
      );
    });
    expect(held.statusCode).toBe(200);
    held.pause();
    const busy = await post(november);
    expect(busy.status).toBe(503);
    const refusal = ((await busy.json()) as { error: { code: string; message: string } }).error;
    expect(refusal.code).toBe('BUSY');
    expect(refusal.message).toMatch(/TALLY_MAX_CONCURRENT_QUERIES/);
    held.on('error', () => undefined); // the server cuts it: reset
    // The server cuts an export its client takes nothing from (after 1 s here), freeing the slot.
    const cut = Date.now();
    await waitFor('the slot to be free', async () => {
      const status = (await post(november)).status;
      return status === 200 ? status : undefined;
    });
    expect(Date.now() - cut).toBeGreaterThan(500);
    held.destroy();
  });
});

describe('label keys named like Object.prototype members', () => {
  it('are labels like any other, in where, groupBy and label values', async () => {
    await tally.incr({ name: 'proto', labels: { constructor: 'x', ['__proto__']: 'y' } }, 2, {
      at,
    });
    await tally.incr({ name: 'proto', labels: { other: 'z' } }, 3, { at }); // neither label
    const link = await fetch(
      `${base}/v1/usage?counter=proto&where=constructor=x&groupBy=__proto__&from=2026-11-01&to=2026-12-01&granularity=total`,
      { headers: auth },
    );
    expect(link.status).toBe(200);
    expect(((await link.json()) as { rows: { labels: unknown; value: number }[] }).rows).toEqual([
      {
        labels: { ['__proto__']: 'y' },
        value: 2,
        buckets: [{ start: '2026-11-01T00:00:00.000Z', value: 2 }],
      },
    ]);
    const grouped = await post({
      counter: 'proto',
      groupBy: ['constructor'],
      from: '2026-11-01',
      to: '2026-12-01',
      granularity: 'total',
    });
    expect(
      ((await grouped.json()) as { rows: { labels: unknown; value: number }[] }).rows.map((row) => [
        row.labels,
        row.value,
      ]),
    ).toEqual([
      [{ constructor: null }, 3],
      [{ constructor: 'x' }, 2],
    ]);
    const values = await fetch(`${base}/v1/labels/constructor/values?counter=proto`, {
      headers: auth,
    });
    expect(await values.json()).toEqual({ values: ['x'], nextCursor: null });
  });
});
