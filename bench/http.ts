// HTTP ingest: `tally serve` against a bare Fastify server with the same routes, both loaded
// by autocannon from this process with the same connections and bodies.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import autocannon from 'autocannon';
import { startTallyProcess } from '../test/support/tally-process.js';
import { freshDatabase, type BenchContext } from './support/context.js';
import { zipf } from './support/measure.js';
import { human, ratioCheck, type BenchmarkResult } from './support/results.js';

const batchSize = 100;
const connections = 64;

interface Target {
  port: number;
  stop(): void;
}

async function startTallyServe(ctx: BenchContext): Promise<Target> {
  const api = startTallyProcess('serve', {
    REDIS_URL: ctx.redis.url,
    DATABASE_URL: await freshDatabase(ctx),
    PORT: '0',
    TALLY_LOG_LEVEL: 'info',
    TALLY_KEY_PREFIX: 'http',
    TALLY_ACCEPT_REDIS_LOSS: ctx.redis.persistence === 'aof-always' ? 'none' : 'bounded',
  });
  return {
    port: await api.apiPort(),
    stop: () => {
      api.kill('SIGTERM');
    },
  };
}

async function startBareFastify(): Promise<Target> {
  const script = new URL('./support/bare-fastify.ts', import.meta.url).pathname;
  // Its stdin is a pipe from us: the server exits when it closes, even if we die first.
  const child = spawn(process.execPath, ['--import', 'tsx', script], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const [line] = (await once(createInterface({ input: child.stdout }), 'line')) as [string];
  return {
    port: (JSON.parse(line) as { port: number }).port,
    stop: () => {
      child.kill('SIGTERM');
    },
  };
}

/** Request bodies cycled through by every connection: Zipf-distributed counters. */
function requests(kind: 'single' | 'batch'): autocannon.Request[] {
  const pick = zipf(100_000);
  return Array.from({ length: 64 }, () =>
    kind === 'single'
      ? {
          method: 'POST' as const,
          path: `/v1/counters/c${pick()}/increment`,
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ by: 1 }),
        }
      : {
          method: 'POST' as const,
          path: '/v1/increments',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            increments: Array.from({ length: batchSize }, () => ({ counter: `c${pick()}`, by: 1 })),
          }),
        },
  );
}

/** Requests answered 2xx per second; any error or non-2xx fails the benchmark loudly. */
async function load(target: Target, kind: 'single' | 'batch', seconds: number): Promise<number> {
  const result = await autocannon({
    url: `http://127.0.0.1:${target.port}`,
    connections,
    duration: seconds,
    requests: requests(kind),
  });
  if (result.errors > 0 || result.non2xx > 0) {
    throw new Error(`${kind} load: ${result.errors} errors, ${result.non2xx} non-2xx answers`);
  }
  return result['2xx'] / seconds;
}

export async function httpIngest(ctx: BenchContext): Promise<BenchmarkResult> {
  const seconds = Math.max(ctx.seconds, 3);
  const figures: Record<string, number> = {};
  const bare = await startBareFastify();
  try {
    figures['bare Fastify single req/s'] = await load(bare, 'single', seconds);
    figures['bare Fastify batch increments/s'] = (await load(bare, 'batch', seconds)) * batchSize;
  } finally {
    bare.stop();
  }
  const tally = await startTallyServe(ctx);
  try {
    figures['tally serve single req/s'] = await load(tally, 'single', seconds);
    figures['tally serve batch increments/s'] = (await load(tally, 'batch', seconds)) * batchSize;
  } finally {
    tally.stop();
  }
  const batch = figures['tally serve batch increments/s'];
  return {
    name: 'HTTP ingest',
    figures,
    checks: [
      {
        benchmark: `HTTP POST /v1/increments, batches of ${batchSize}`,
        measured: `${human(batch)} increments/s (bare Fastify: ${human(figures['bare Fastify batch increments/s'])}/s)`,
        target: '≥ 300k increments/s',
        met: batch >= 300_000,
      },
      ratioCheck(
        'HTTP single increments',
        figures['tally serve single req/s'],
        figures['bare Fastify single req/s'],
        'bare Fastify route',
        0.5,
      ),
    ],
  };
}
