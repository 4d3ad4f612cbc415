// A process of its own that offers `rate` increments per second (open loop) to labelled
// counters, zipf over `tenants`, for `seconds`; prints {"offered","acknowledged"} at the end.
// Benchmarks that measure latency under load run it apart, so its callbacks do not sit in the
// measured process's event loop.
// argv[2]: JSON { redis, postgres, keyPrefix, shards, buckets, rate, seconds, tenants }
import { setPriority } from 'node:os';
import { createTally, type Granularity } from '../../src/index.js';
import { sleep, zipf } from './measure.js';

const options = JSON.parse(process.argv[2] ?? '{}') as {
  redis: string;
  postgres: string;
  keyPrefix: string;
  shards: number;
  buckets: Granularity[];
  rate: number;
  seconds: number;
  tenants: number;
};
// The load stands for clients on other machines. Here it shares two cores with Redis,
// PostgreSQL, the worker and the measured process, so it runs at the lowest CPU priority: it
// takes what they leave (it still offered its 100k/s in every run), instead of the measured
// query waiting for it to yield a core.
setPriority(19);
const tally = await createTally({ ...options, rebuildAtStart: false });
const pick = zipf(options.tenants);
let offered = 0;
let acknowledged = 0;
const started = performance.now();
const deadline = started + options.seconds * 1_000;
while (performance.now() < deadline) {
  const owed = Math.floor(((performance.now() - started) / 1_000) * options.rate) - offered;
  for (let i = 0; i < owed; i++) {
    offered++;
    const tenant = `t${String(pick()).padStart(6, '0')}`;
    tally.incr({ name: 'api_calls', labels: { tenant } }).then(
      () => acknowledged++,
      () => undefined,
    );
  }
  await sleep(1);
}
while (acknowledged < offered && performance.now() < deadline + 10_000) await sleep(10);
console.log(JSON.stringify({ offered, acknowledged }));
await tally.close();
