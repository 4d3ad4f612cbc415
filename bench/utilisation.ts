// Where the hot path's time goes: `npm run bench:utilisation [-- --seconds 3 --modes group,raw]`.
// For each mode, 10k increments in flight (Zipf over 100k counters, or one hot counter) against
// private durable servers, as `npm run bench` runs them, and around the measurement: Node's
// event-loop utilisation (the one thread that runs the code), Node's CPU (every thread, GC
// helpers included), Redis's CPU, and the script calls and entries per increment. Add
// `node --cpu-prof` (NODE_OPTIONS) for a profile of the same load. Not part of `npm run bench`:
// it explains its figures (docs/benchmarks.md, "What bounds the misses").
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { createTally } from '../src/index.js';
import { startPostgres, startRedis } from '../test/support/index.js';
import { freshDatabase } from './support/context.js';
import { throughput, zipf } from './support/measure.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '3' },
    modes: { type: 'string', default: 'raw,group,hot,per-call' },
  },
});
const seconds = Number(values.seconds);
const inFlight = 10_000;

const redis = await startRedis({ persistence: 'aof-always' });
const postgres = await startPostgres({ durable: true });
const ctx = { redis, postgres, seconds, quick: false };
const admin = new Redis(redis.url);
const url = await freshDatabase(ctx);
const raw = new Redis(redis.url, { enableAutoPipelining: true });
const grouped = await createTally({ redis: redis.url, postgres: url, keyPrefix: 'group' });
const perCall = await createTally({
  redis: redis.url,
  // A store of its own: a store's key prefix is fixed once it is set up.
  postgres: await freshDatabase(ctx),
  keyPrefix: 'percall',
  coalesce: false,
});
const pick = zipf(100_000);
const modes: Record<string, () => Promise<unknown>> = {
  raw: () => raw.hincrby('raw', `c${pick()}`, 1),
  group: () => grouped.incr(`c${pick()}`),
  hot: () => grouped.incr('hot'),
  'per-call': () => perCall.incr(`c${pick()}`),
};

/** Redis's CPU seconds so far (user + system). */
async function redisCpuSeconds(): Promise<number> {
  const info = await admin.info('cpu');
  const field = (name: string) => Number(new RegExp(`${name}:([\\d.]+)`).exec(info)?.[1]);
  return field('used_cpu_user') + field('used_cpu_sys');
}

try {
  for (const mode of values.modes.split(',')) {
    const op = modes[mode];
    if (op === undefined) throw new Error(`unknown mode ${mode}: ${Object.keys(modes).join(', ')}`);
    await throughput(inFlight, 1, op); // warm-up
    await admin.config('RESETSTAT');
    const loop = performance.eventLoopUtilization();
    const cpu = process.cpuUsage();
    const redisBefore = await redisCpuSeconds();
    const started = performance.now();
    const perSecond = await throughput(inFlight, seconds, op);
    const wall = (performance.now() - started) / 1_000;
    const nodeCpu = process.cpuUsage(cpu);
    const redisCpu = (await redisCpuSeconds()) - redisBefore;
    const stats = await admin.info('commandstats');
    const calls = (command: string) =>
      Number(new RegExp(`cmdstat_${command}:calls=(\\d+)`).exec(stats)?.[1] ?? 0);
    const increments = perSecond * wall;
    const nodeSeconds = (nodeCpu.user + nodeCpu.system) / 1e6;
    console.log(
      [
        `${mode}: ${Math.round(perSecond).toLocaleString('en')} increments/s`,
        `event loop ${(performance.eventLoopUtilization(loop).utilization * 100).toFixed(0)} % busy`,
        `Node CPU ${(nodeSeconds / wall).toFixed(2)} cores (${((nodeSeconds / increments) * 1e6).toFixed(2)} µs/increment)`,
        `Redis CPU ${(redisCpu / wall).toFixed(2)} cores`,
        // Each script entry is two HINCRBY; raw HINCRBY has no script calls.
        ...(mode === 'raw'
          ? []
          : [
              `EVALSHA per increment ${(calls('evalsha') / increments).toFixed(4)}`,
              `entries per increment ${(calls('hincrby') / 2 / increments).toFixed(3)}`,
            ]),
      ].join('; '),
    );
  }
} finally {
  raw.disconnect();
  admin.disconnect();
  await grouped.close();
  await perCall.close();
  await postgres.destroy();
  await redis.stop();
}
