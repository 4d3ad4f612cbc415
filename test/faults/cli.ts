// The long fault-injection run:
//   npm run test:faults -- --duration 30m --seed N [--clients 20] [--batch 100]
//     [--fault-every 500ms] [--min-faults 1000] [--persistence none]
//     [--topology cluster --min-replicas 1]
// Prints the figures as JSON and exits 1 on any violation (the offending history is saved).
import { parseArgs } from 'node:util';
import { runScenario } from './scenario.js';

const { values } = parseArgs({
  options: {
    duration: { type: 'string', default: '5m' },
    seed: { type: 'string' },
    clients: { type: 'string', default: '20' },
    batch: { type: 'string', default: '1' },
    'fault-every': { type: 'string', default: '1s' },
    /** Keep injecting past the duration until this many faults have struck. */
    'min-faults': { type: 'string', default: '0' },
    persistence: { type: 'string', default: 'aof-always' },
    /** cluster: a Redis Cluster of 3 + 3 and failovers (primary kill -9, replica kill, pause). */
    topology: { type: 'string', default: 'single' },
    'min-replicas': { type: 'string', default: '0' },
  },
});

function milliseconds(text: string): number {
  const match = /^(\d+)(ms|s|m|h)?$/.exec(text);
  if (match === null) throw new Error(`not a duration: ${text} (use 90s, 30m, 1h)`);
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[match[2] ?? 's'] ?? 1_000;
  return Number(match[1]) * unit;
}

const seed = Number(values.seed ?? Date.now() % 1_000_000);
const started = Date.now();
console.error(`fault run: seed ${seed}, duration ${values.duration}`);
const result = await runScenario({
  seed,
  durationMs: milliseconds(values.duration),
  faultEveryMs: milliseconds(values['fault-every']),
  minFaults: Number(values['min-faults']),
  persistence: values.persistence === 'none' ? 'none' : 'aof-always',
  clients: Number(values.clients),
  batchSize: Number(values.batch),
  wipeMidRun: values.persistence === 'none' && values.topology !== 'cluster',
  topology: values.topology === 'cluster' ? 'cluster' : 'single',
  minReplicas: Number(values['min-replicas']),
  log: (line) => {
    console.error(`${((Date.now() - started) / 1000).toFixed(0)}s ${line}`);
  },
});
const seconds = (Date.now() - started) / 1000;
console.log(
  JSON.stringify(
    {
      ...result,
      durationSeconds: Math.round(seconds),
      faultsTotal: Object.values(result.faults).reduce((a, b) => a + b, 0),
      okPerSecondOfLoad: Math.round(result.operations.ok / result.loadSeconds),
    },
    null,
    1,
  ),
);
// Explicitly: a client still retrying an abandoned increment must not keep the process alive.
process.exit(result.violations.length === 0 ? 0 : 1);
