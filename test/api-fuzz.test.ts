/**
 * Fuzzing the HTTP API with fast-check: 10,000 requests, valid and invalid mixed (malformed
 * JSON, wrong types, huge numbers, overflow, bad names, oversized bodies, bad encodings). The
 * server must never answer 5xx, never change anything for a request it rejects, count exactly
 * what it accepts, and stay up.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../src/index.js';
import { createDatabase, startRedis, type RedisHandle } from './support/index.js';
import { startTallyProcess, type TallyProcess } from './support/tally-process.js';

const bodyLimitBytes = 16_384;
const pool = ['f0', 'f1', 'f2', 'f/3', 'f 4'];

let redis: RedisHandle;
let server: TallyProcess;
let base: string;
beforeAll(async () => {
  redis = await startRedis();
  const databaseUrl = await createDatabase();
  await migrate(databaseUrl);
  server = startTallyProcess('serve', {
    REDIS_URL: redis.url,
    DATABASE_URL: databaseUrl,
    PORT: '0',
    TALLY_SHARDS: '2',
    TALLY_KEY_PREFIX: 'fuzz',
    TALLY_BODY_LIMIT_BYTES: String(bodyLimitBytes),
    TALLY_MAX_BATCH: '20',
    TALLY_LOG_LEVEL: 'info',
    // A Redis without persistence: fuzzing is about the API's answers, not durability.
    TALLY_ACCEPT_REDIS_LOSS: 'bounded',
  });
  base = `http://127.0.0.1:${await server.apiPort()}`;
});
afterAll(async () => {
  server.kill('SIGTERM');
  await server.exited;
  await redis.stop();
});

/** What a generated request increments if the server accepts it. */
interface Intent {
  counter: string;
  by: number;
}

interface FuzzRequest {
  method: 'GET' | 'POST';
  path: string;
  contentType: string | undefined;
  body: string | Buffer | undefined;
}

/**
 * What a request increments if the server accepts it, read from the request itself (whatever
 * generated it: a garbage body can still be a valid increment, such as `{}` to a counter).
 */
function intentsOf(request: FuzzRequest): { kind: 'batch' | 'one'; intents: Intent[] } | undefined {
  if (request.method !== 'POST' || request.body === undefined) return undefined;
  const text = request.body.toString();
  let body: unknown;
  try {
    // An empty body is no body: the one-counter route then increments by 1.
    body = text === '' ? {} : JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof body !== 'object' || body === null) return undefined;
  if (request.path === '/v1/increments') {
    const items = (body as { increments?: unknown }).increments;
    if (!Array.isArray(items)) return undefined;
    return {
      kind: 'batch',
      intents: items.map((raw) => {
        const entry = raw as { counter: string; by?: number };
        return { counter: entry.counter, by: entry.by ?? 1 };
      }),
    };
  }
  const one = /^\/v1\/counters\/([^/]*)\/increment$/.exec(request.path);
  if (one?.[1] === undefined) return undefined;
  let counter: string;
  try {
    counter = decodeURIComponent(one[1]);
  } catch {
    return undefined;
  }
  return { kind: 'one', intents: [{ counter, by: (body as { by?: number }).by ?? 1 }] };
}

const weirdNumber = fc.oneof(
  fc.integer({ min: -5, max: 5 }),
  fc.constantFrom(
    Number.MAX_SAFE_INTEGER,
    -Number.MAX_SAFE_INTEGER,
    Number.MAX_SAFE_INTEGER + 2,
    1e21,
    1.5,
    -0.5,
  ),
  fc.double(),
);
const weirdValue = fc.oneof(
  weirdNumber,
  fc.string({ maxLength: 5 }),
  fc.constant(null),
  fc.boolean(),
  fc.constant([]),
);
const name = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...pool) },
  fc.constantFrom('', 'x'.repeat(257), 'é'.repeat(200), 'tab\there', 'nul\u0000', '\ud800'),
  fc.string({ unit: 'binary', maxLength: 12 }),
);
/** An instant inside the window `at` is accepted in. */
const anHourAgo = new Date(Date.now() - 3_600_000).toISOString();
const item = fc.record(
  {
    counter: fc.oneof({ weight: 8, arbitrary: name }, weirdValue),
    by: fc.oneof({ weight: 4, arbitrary: fc.integer({ min: -3, max: 9 }) }, weirdValue),
    idempotencyKey: fc.oneof(fc.constantFrom('k1', 'k2', 'k3'), fc.string({ maxLength: 4 })),
    at: fc.oneof(fc.constant(anHourAgo), fc.string({ maxLength: 6 })),
    limit: fc.oneof(fc.integer({ min: 0, max: 50 }), weirdValue),
    extra: fc.string(),
  },
  { requiredKeys: [] },
);

/** Percent-encodes a name for a path; a lone surrogate goes as the bytes of a bad encoding. */
function inPath(value: string): string {
  try {
    return encodeURIComponent(value);
  } catch {
    return '%ED%A0%80'; // UTF-8-encoded surrogate: invalid UTF-8
  }
}

const requestArbitrary: fc.Arbitrary<FuzzRequest> = fc.oneof(
  // Batches (mostly well-formed JSON with random content).
  {
    weight: 5,
    arbitrary: fc.array(item, { minLength: 0, maxLength: 25 }).map((items) => ({
      method: 'POST' as const,
      path: '/v1/increments',
      contentType: 'application/json',
      body: JSON.stringify({ increments: items }),
    })),
  },
  // One counter.
  {
    weight: 3,
    arbitrary: fc.tuple(name, item).map(([counter, body]) => ({
      method: 'POST' as const,
      path: `/v1/counters/${inPath(counter)}/increment`,
      contentType: 'application/json',
      body: JSON.stringify({ by: body.by, limit: body.limit, idempotencyKey: body.idempotencyKey }),
    })),
  },
  // Reads, malformed paths, usage queries.
  {
    weight: 2,
    arbitrary: fc
      .oneof(
        name.map((n) => `/v1/counters/${inPath(n)}`),
        fc.constantFrom('/v1/counters/%ZZ', '/v1/counters/%', '/v1/counters/%C0%AF', '/v1//x'),
        fc.string({ maxLength: 10 }).map((q) => `/v1/counters/f0/usage?${inPath(q)}`),
        fc.constant(
          '/v1/counters/f0/usage?from=2026-01-01T00:00:00Z&to=2020-01-01T00:00:00Z&granularity=hour',
        ),
        fc.constant(
          '/v1/counters/f0/usage?from=1990-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&granularity=minute',
        ),
      )
      .map((path) => ({
        method: 'GET' as const,
        path,
        contentType: undefined,
        body: undefined,
      })),
  },
  // Garbage bodies: malformed JSON, random JSON, bad encodings, wrong media types, oversized.
  {
    weight: 2,
    arbitrary: fc
      .tuple(
        fc.oneof(
          fc.string({ maxLength: 40 }),
          fc.json({ maxDepth: 3 }),
          fc.uint8Array({ maxLength: 40 }).map((bytes) => Buffer.from(bytes)),
          fc.constant(Buffer.from([0x7b, 0xff, 0xfe, 0x7d])),
          fc.constant(
            JSON.stringify({
              increments: [{ counter: 'f0', by: 1, pad: 'x'.repeat(bodyLimitBytes) }],
            }),
          ),
          fc.constant('{"counters":["f0","f1"]}'),
        ),
        fc.constantFrom(
          'application/json',
          'text/plain',
          'application/x-www-form-urlencoded',
          undefined,
        ),
        fc.constantFrom('/v1/increments', '/v1/counters:read', '/v1/counters/f0/increment'),
      )
      .map(([body, contentType, path]) => ({
        method: 'POST' as const,
        path,
        contentType,
        body,
      })),
  },
);

async function send(request: FuzzRequest): Promise<{ status: number; json: unknown }> {
  const response = await fetch(`${base}${request.path}`, {
    method: request.method,
    headers: request.contentType === undefined ? {} : { 'content-type': request.contentType },
    ...(request.body === undefined ? {} : { body: request.body }),
  });
  const text = await response.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: response.status, json };
}

async function totals(): Promise<number[]> {
  const answer = await send({
    method: 'POST',
    path: '/v1/counters:read',
    contentType: 'application/json',
    body: JSON.stringify({ counters: pool }),
  });
  const { values } = answer.json as { values: Record<string, number> };
  return pool.map((counter) => values[counter] ?? 0);
}

describe('API fuzzing', () => {
  it('10,000 random requests: no 5xx, rejected requests change nothing, accepted ones count exactly', async () => {
    const model = new Map(pool.map((counter) => [counter, 0]));
    let sent = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(requestArbitrary, { minLength: 500, maxLength: 500 }),
        async (requests) => {
          const queue = [...requests];
          const worker = async () => {
            for (let request = queue.shift(); request !== undefined; request = queue.shift()) {
              const answer = await send(request);
              sent++;
              expect(
                answer.status,
                `${request.method} ${request.path} ${String(request.body)}`,
              ).toBeLessThan(500);
              const expected = intentsOf(request);
              if (answer.status !== 200 || expected === undefined) continue;
              const results =
                expected.kind === 'batch'
                  ? (answer.json as { results: { status: string }[] }).results
                  : [answer.json as { status: string }];
              results.forEach((result, index) => {
                const intent = expected.intents[index];
                if (result.status === 'applied' && intent !== undefined) {
                  model.set(intent.counter, (model.get(intent.counter) ?? 0) + intent.by);
                }
              });
            }
          };
          await Promise.all(Array.from({ length: 16 }, worker));
          expect(await totals()).toEqual(pool.map((counter) => model.get(counter)));
        },
      ),
      { numRuns: 20, endOnFailure: true },
    );
    expect(sent).toBeGreaterThanOrEqual(10_000);
    // Still up and answering.
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
  }, 300_000);
});
