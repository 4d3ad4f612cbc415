// The benchmark suite: `npm run bench [-- --seconds 3 --quick --only hot-path,flush]`.
// Starts private Redis and PostgreSQL servers (the test harness), runs each benchmark, prints
// the targets table, writes the figures as JSON and the throughput chart as SVG.
import { writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { parseArgs } from 'node:util';
import { startPostgres, startRedis } from '../test/support/index.js';
import { clusterIncrements } from './cluster.js';
import { flush } from './flush.js';
import { hotPath } from './hot-path.js';
import { httpIngest } from './http.js';
import { flushLag } from './lag.js';
import { quotaIncrements } from './quota.js';
import { reconcile } from './reconcile.js';
import { retentionPruning } from './retention.js';
import { usageQuery } from './usage-query.js';
import { throughputChart } from './support/chart.js';
import type { BenchContext } from './support/context.js';
import type { BenchmarkResult } from './support/results.js';

const benchmarks: Record<string, (ctx: BenchContext) => Promise<BenchmarkResult>> = {
  'hot-path': hotPath,
  http: httpIngest,
  flush,
  reconcile,
  lag: flushLag,
  'usage-query': usageQuery,
  quota: quotaIncrements,
  retention: retentionPruning,
  cluster: clusterIncrements,
};

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '3' },
    quick: { type: 'boolean', default: false },
    only: { type: 'string', default: Object.keys(benchmarks).join(',') },
    json: { type: 'string', default: 'bench/results.json' },
    chart: { type: 'string', default: 'docs/benchmarks-throughput.svg' },
  },
});
const chosen = values.only.split(',');
for (const name of chosen) {
  if (!(name in benchmarks)) {
    throw new Error(`unknown benchmark ${name}; choose from ${Object.keys(benchmarks).join(', ')}`);
  }
}

const started = Date.now();
const redis = await startRedis({ persistence: 'aof-always' });
const postgres = await startPostgres({ durable: true });
const ctx: BenchContext = { redis, postgres, seconds: Number(values.seconds), quick: values.quick };
const results: BenchmarkResult[] = [];
try {
  for (const name of chosen) {
    const began = Date.now();
    console.error(`running ${name}…`);
    const result = await benchmarks[name]?.(ctx);
    if (result !== undefined) results.push(result);
    console.error(`  done in ${((Date.now() - began) / 1000).toFixed(0)} s`);
  }
} finally {
  await postgres.destroy();
  await redis.stop();
}

const checks = results.flatMap((r) => r.checks);
const rows = [
  ['benchmark', 'measured', 'target', 'met'],
  ...checks.map((c) => [c.benchmark, c.measured, c.target, c.met ? 'yes' : 'NO']),
];
const widths = rows[0]?.map((_, i) => Math.max(...rows.map((row) => row[i]?.length ?? 0))) ?? [];
for (const row of rows) console.log(row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  '));

const machine = {
  cpus: cpus().length,
  cpuModel: cpus()[0]?.model,
  memoryGiB: Math.round(totalmem() / 2 ** 30),
  node: process.version,
};
await writeFile(
  values.json,
  `${JSON.stringify({ date: new Date().toISOString(), machine, options: values, results }, null, 1)}\n`,
);
const series = results.find((r) => r.series !== undefined)?.series;
if (series !== undefined) {
  await writeFile(
    values.chart,
    throughputChart(series, 'incr throughput, Zipf(1.0) over 100k counters (one run)'),
  );
}
console.error(
  `${checks.filter((c) => c.met).length} of ${checks.length} targets met in ${((Date.now() - started) / 1000).toFixed(0)} s; figures in ${values.json}`,
);
