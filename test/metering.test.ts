import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import express from 'express';
import Fastify from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expressMetering, tallyMetering, type Tally } from '../src/index.js';
import { createDatabase, startRedis, type RedisHandle } from './support/index.js';
import { tallyOn } from './support/tally-store.js';

let redis: RedisHandle;
let tally: Tally;
beforeAll(async () => {
  redis = await startRedis();
  tally = await tallyOn(redis.url, await createDatabase(), { shards: 4 });
});
afterAll(async () => {
  await tally.close();
  await redis.stop();
});

function tenantOf(headers: Record<string, string | string[] | undefined>): string {
  const tenant = headers['x-tenant'];
  return typeof tenant === 'string' ? tenant : 'anonymous';
}

describe('metering middleware', () => {
  it('counts 1,000 requests of a Fastify app exactly, per tenant and route', async () => {
    const app = Fastify();
    await app.register(tallyMetering, {
      tally,
      counter: (request) => ({
        name: 'fastify_requests',
        labels: { tenant: tenantOf(request.headers), route: request.routeOptions.url ?? 'none' },
      }),
    });
    app.get('/search', () => ({ ok: true }));
    app.post('/orders', () => ({ ok: true }));
    app.get('/healthz', () => ({ ok: true }));
    await app.ready();

    const responses = await Promise.all(
      Array.from({ length: 1_000 }, (_, i) =>
        app.inject({
          method: i % 4 === 0 ? 'POST' : 'GET',
          url: i % 4 === 0 ? '/orders' : '/search',
          headers: { 'x-tenant': i % 2 === 0 ? 'acme' : 'globex' },
        }),
      ),
    );
    expect(responses.every((response) => response.statusCode === 200)).toBe(true);
    const count = (tenant: string, route: string) =>
      tally.get({ name: 'fastify_requests', labels: { tenant, route } });
    // i % 4 === 0 → POST /orders (all acme); the rest split between acme and globex on /search.
    expect(await count('acme', '/orders')).toBe(250);
    expect(await count('acme', '/search')).toBe(250);
    expect(await count('globex', '/search')).toBe(500);
    expect(await count('globex', '/orders')).toBe(0);
    await app.close();
  });

  it('fails the request when an awaited increment fails; only reports it when not awaited', async () => {
    const app = Fastify();
    const failures: unknown[] = [];
    await app.register(tallyMetering, {
      tally,
      counter: (request) => (request.url === '/bad' ? 'x'.repeat(300) : 'fine'),
    });
    let handled = 0;
    app.get('/bad', () => ({ ok: ++handled }));
    app.get('/good', () => ({ ok: true }));
    // The host app's error handler decides the status; the handler never ran uncounted.
    expect((await app.inject({ url: '/bad' })).statusCode).toBe(500);
    expect(handled).toBe(0);
    expect((await app.inject({ url: '/good' })).statusCode).toBe(200);
    await app.close();

    const relaxed = Fastify();
    await relaxed.register(tallyMetering, {
      tally,
      awaitIncrement: false,
      counter: () => 'y'.repeat(300),
      onError: (error) => failures.push(error),
    });
    relaxed.get('/', () => ({ ok: true }));
    expect((await relaxed.inject({ url: '/' })).statusCode).toBe(200);
    await new Promise((resolve) => setImmediate(resolve));
    expect(failures).toHaveLength(1);
    await relaxed.close();
  });

  it('counts requests of an Express app exactly', async () => {
    const app = express();
    app.use(
      expressMetering({ tally, counter: (request) => `express:${tenantOf(request.headers)}` }),
    );
    app.get('/', (_request, response) => {
      response.json({ ok: true });
    });
    const server = app.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as AddressInfo;
    try {
      const statuses = await Promise.all(
        Array.from(
          { length: 200 },
          async () =>
            (await fetch(`http://127.0.0.1:${port}/`, { headers: { 'x-tenant': 'initech' } }))
              .status,
        ),
      );
      expect(statuses.every((status) => status === 200)).toBe(true);
      expect(await tally.get('express:initech')).toBe(200);
    } finally {
      server.close();
    }
  });
});
