import { SingleBar } from 'cli-progress';
import { migrate, migrationStatus } from '../store/migrator.js';
import type { ShardReconcileReport } from '../engine/reconciler.js';
import { hostname, userInfo } from 'node:os';
import type { DeletionTarget } from '../engine/deletion.js';
import { whereOf } from '../engine/query-spec.js';
import type { Tally, TallyStatus } from '../tally.js';
import { ValidationError } from '../errors.js';
import { ExitCode } from './exit-codes.js';
import { summariseReconcile, type ReconcileSummary } from '../engine/reconcile-summary.js';
import { cliLogger, openStore, requireOption, type StoreOptions } from './store-options.js';

type Print = (line: string) => void;
const print: Print = (line) => {
  process.stdout.write(`${line}\n`);
};

async function withStore<T>(options: StoreOptions, use: (tally: Tally) => Promise<T>): Promise<T> {
  const tally = await openStore(options);
  try {
    return await use(tally);
  } finally {
    await tally.close();
  }
}

export async function migrateCommand(options: { postgres?: string; status?: boolean }) {
  const url = requireOption(options.postgres, '--postgres', 'DATABASE_URL');
  if (options.status === true) {
    for (const migration of await migrationStatus(url)) {
      const id = `${String(migration.version).padStart(4, '0')}_${migration.name}`;
      print(
        `${id}  ${migration.appliedAt === null ? 'pending' : `applied ${migration.appliedAt.toISOString()}`}`,
      );
    }
    return ExitCode.ok;
  }
  const result = await migrate(url, { logger: cliLogger() });
  const names = result.applied.map((m) => `${String(m.version).padStart(4, '0')}_${m.name}`);
  print(
    names.length === 0
      ? `schema is current at version ${result.version}`
      : `applied ${names.join(', ')}; schema is at version ${result.version}`,
  );
  return ExitCode.ok;
}

/** Rounds of flushing before `tally flush` gives up on a store that keeps receiving increments. */
const flushRounds = 5;

export async function flushCommand(options: StoreOptions) {
  return withStore(options, async (tally) => {
    let batches = 0;
    let counters = 0;
    for (let round = 0; round < flushRounds; round++) {
      for (const batch of await tally.flush()) {
        batches++;
        counters += batch.counters;
        print(
          `shard ${batch.shard}: batch ${batch.batchId} ${plural(batch.counters, 'counter')}` +
            (batch.resumed
              ? ' (resumed' + (batch.alreadyApplied ? ', already applied)' : ')')
              : ''),
        );
      }
      const status = await tally.status();
      if (status.shards.every((s) => s.pendingDeltas === 0 && s.inflightBatch === null)) {
        print(
          `flushed ${plural(batches, 'batch', 'batches')}, ${plural(counters, 'counter total')}; ` +
            'nothing left to flush',
        );
        return ExitCode.ok;
      }
    }
    print(
      `flushed ${plural(batches, 'batch', 'batches')}, but increments keep arriving: something ` +
        'is still pending',
    );
    return ExitCode.checkFailed;
  });
}

interface ReconcileOptions extends StoreOptions {
  repair?: boolean;
  json?: boolean;
  shard?: string;
}

/**
 * Reconcile's progress on stderr: a bar on a terminal, else a line per shard in shard order
 * (shards finish out of order, several being checked at once).
 */
function reconcileProgress(shardCount: number, firstShard: number) {
  const bar = process.stderr.isTTY
    ? new SingleBar({
        format: 'reconcile [{bar}] {value}/{total} shards | {counters} counters | {drift} drifted',
        stream: process.stderr,
      })
    : undefined;
  const totals = { counters: 0, drifted: 0 };
  bar?.start(shardCount, 0, { counters: 0, drift: 0 });
  const finished = new Map<number, ShardReconcileReport>();
  let nextLine = firstShard;
  return {
    onShard(report: ShardReconcileReport) {
      totals.counters += report.countersChecked;
      totals.drifted += report.drift.length;
      if (bar !== undefined) {
        bar.increment({ counters: totals.counters, drift: totals.drifted });
        return;
      }
      finished.set(report.shard, report);
      for (let done = finished.get(nextLine); done !== undefined; done = finished.get(nextLine)) {
        process.stderr.write(
          `shard ${done.shard}: ${plural(done.countersChecked, 'counter')}, ${done.drift.length} drifted\n`,
        );
        finished.delete(nextLine++);
      }
    },
    stop() {
      bar?.stop();
    },
  };
}

function printReconcile(report: ReconcileSummary): void {
  const { drift } = report;
  print(
    `${report.mode}: ${plural(report.shards, 'shard')}, ${plural(report.countersChecked, 'counter')} ` +
      `checked in ${report.durationMs} ms`,
  );
  for (const { shard, at } of report.lossesFoundAt) {
    print(`  shard ${shard}: found empty and rebuilt by a running process at ${at}`);
  }
  for (const { shard, foundAt, callsLost } of report.rewinds) {
    print(
      `  shard ${shard}: went back in time at ${foundAt} (a failover to a replica that was ` +
        `behind, or an AOF restart): at least ${plural(callsLost, 'applied increment call')} lost`,
    );
  }
  if (report.lossesFoundAt.length + report.rewinds.length > 0 && report.mode === 'check') {
    print('  (reported until a reconcile --repair has reported them)');
  }
  for (const d of drift.slice(0, 50)) {
    print(`  ${d.counter}: redis ${d.redisValue ?? 'missing'}, expected ${d.expectedValue}`);
  }
  if (drift.length > 50) print(`  … and ${drift.length - 50} more (--json lists them all)`);
  if (report.redisAheadBy > 0) {
    print(`Redis is ahead of PostgreSQL + pending deltas by ${report.redisAheadBy}`);
  }
  for (const { shard, batchId } of report.refusedBatches) {
    print(
      `shard ${shard}: not checked, its flushes refuse batch ${batchId} (older than the pruned ` +
        `ledger, maybe applied already): settle it first with tally resolve-batch ${shard} ` +
        `${batchId} --discard|--apply`,
    );
  }
  for (const explanation of report.explanations) {
    print(`${explanation.cause}: ${explanation.detail}`);
  }
  const unchecked = report.refusedBatches.length;
  const others = unchecked === 0 ? '' : ` on the other shards (${unchecked} not checked)`;
  print(
    drift.length === 0
      ? `no drift${others}: Redis and PostgreSQL agree`
      : `${plural(drift.length, 'counter')} drifted${others}${report.repaired ? ', repaired' : ''}`,
  );
}

export async function reconcileCommand(options: ReconcileOptions) {
  return withStore(options, async (tally) => {
    const started = Date.now();
    const shard = options.shard === undefined ? undefined : parseShard(options.shard);
    const progress = reconcileProgress(
      shard === undefined ? Number(options.shards) : 1,
      shard ?? 0,
    );
    const repair = options.repair === true;
    const reports = await tally.reconcile({
      repair,
      ...(shard === undefined ? {} : { shard }),
      onShard: (report) => {
        progress.onShard(report);
      },
    });
    progress.stop();
    const report = summariseReconcile(tally, reports, repair, Date.now() - started);
    if (options.json === true) print(JSON.stringify(report, null, 2));
    else printReconcile(report);
    const failed =
      report.refusedBatches.length > 0 ||
      (!repair && (report.drift.length > 0 || report.redisLostData.length > 0));
    return failed ? ExitCode.checkFailed : ExitCode.ok;
  });
}

/** `1 counter`, `2 counters`. */
function plural(count: number, one: string, many = `${one}s`): string {
  return `${count} ${count === 1 ? one : many}`;
}

/** Rows as columns, each as wide as its widest cell. */
function table(rows: readonly (readonly string[])[]): string[] {
  const widths = rows[0]?.map((_, column) =>
    Math.max(...rows.map((row) => row[column]?.length ?? 0)),
  );
  return rows.map((row) =>
    row
      .map((cell, column) => cell.padEnd(widths?.[column] ?? 0))
      .join('  ')
      .trimEnd(),
  );
}

function describeStatus(status: TallyStatus): string[] {
  const lines = [
    `schema version ${status.schemaVersion ?? 'unknown (PostgreSQL unreachable)'}`,
    `redis ${status.redis.redisVersion}: appendonly ${status.redis.appendonly ? 'yes' : 'no'}, ` +
      `appendfsync ${status.redis.appendfsync}, maxmemory-policy ${status.redis.maxmemoryPolicy}`,
    `loss bound: ${status.redis.lossBound}`,
    ...table([
      ['shard', 'pending', 'oldest-unflushed', 'in-flight', 'totals', 'last-flush'],
      ...status.shards.map((s) => [
        String(s.shard),
        String(s.pendingDeltas),
        s.pendingDeltas === 0 && s.inflightBatch === null
          ? '-'
          : `${(s.oldestUnflushedAgeMs / 1000).toFixed(1)} s`,
        s.inflightBatch === null
          ? '-'
          : plural(s.inflightBatch.deltas, 'delta') + (s.inflightBatch.refused ? ' REFUSED' : ''),
        s.totalsValid ? 'built' : 'MISSING',
        s.lastFlushAt?.toISOString() ?? 'never',
      ]),
    ]),
  ];
  for (const [granularity, at] of Object.entries(status.buckets?.prunedBefore ?? {})) {
    lines.push(`${granularity} buckets held from ${at.toISOString()} (pruned or not kept before)`);
  }
  if (status.buckets?.moving === true) {
    lines.push(
      'bucket rows of the upgraded store are still moving into the partitions (the worker does it)',
    );
  }
  for (const { shard, inflightBatch } of status.shards) {
    if (inflightBatch?.refused !== true) continue;
    lines.push(
      `shard ${shard}'s flushes refuse batch ${inflightBatch.batchId} (older than the pruned ` +
        `ledger): decide with tally resolve-batch ${shard} ${inflightBatch.batchId} ` +
        '--discard|--apply (docs/operations.md, "A refused batch")',
    );
  }
  const lost = status.shards.filter((s) => (s.unreportedRedisLosses ?? 0) > 0);
  if (lost.length > 0) {
    lines.push(
      `Redis lost the data of shards ${lost.map((s) => s.shard).join(', ')} (rebuilt since): ` +
        'run tally reconcile for the report',
    );
  }
  return lines;
}

export async function statusCommand(options: StoreOptions & { json?: boolean }) {
  return withStore(options, async (tally) => {
    const status = await tally.status();
    if (options.json === true) print(JSON.stringify(status, null, 2));
    else for (const line of describeStatus(status)) print(line);
    return ExitCode.ok;
  });
}

/** A shard as typed on the command line; the store's own range is checked once it is open. */
function parseShard(raw: string): number {
  if (!/^\d{1,5}$/.test(raw)) {
    throw new ValidationError(`A shard is a whole number from 0, got ${JSON.stringify(raw)}.`);
  }
  return Number(raw);
}

export async function resolveBatchCommand(
  shard: string,
  batchId: string,
  options: StoreOptions & { discard?: boolean; apply?: boolean },
) {
  if (options.discard === options.apply) {
    throw new ValidationError('Pass one of --discard and --apply.');
  }
  const decision = options.discard === true ? 'discard' : 'apply';
  // Checked before the store is opened (and, on a new store, set up).
  const shardNumber = parseShard(shard);
  if (batchId === '') throw new ValidationError('The batch id is empty.');
  return withStore(options, async (tally) => {
    const resolved = await tally.resolveRefusedBatch(shardNumber, batchId, decision);
    const what = `shard ${resolved.shard}: batch ${JSON.stringify(batchId)}`;
    print(
      decision === 'discard'
        ? `${what} discarded (${plural(resolved.deltas, 'delta')}); Redis totals rebuilt from ` +
            'PostgreSQL + pending'
        : `${what} applied (${plural(resolved.deltas, 'delta')})`,
    );
    return ExitCode.ok;
  });
}

export interface DeleteCommandOptions extends StoreOptions {
  prefix?: string;
  where?: string[];
  yes?: boolean;
  json?: boolean;
}

/** Who runs `tally delete`, for the deletion's record. */
function cliRequester(): string {
  let user = 'unknown';
  try {
    user = userInfo().username;
  } catch {
    // no passwd entry (a container's arbitrary uid): the host still says where
  }
  return `cli:${user}@${hostname()}`.slice(0, 200);
}

/**
 * `tally delete`: lists what a deletion takes (a dry run), or with --yes deletes it. A name
 * alone is that counter; with --where, the base name's labelled counters matching; --prefix,
 * plain names.
 */
export async function deleteCommand(counter: string | undefined, options: DeleteCommandOptions) {
  if ((counter === undefined) === (options.prefix === undefined)) {
    throw new ValidationError('Name a counter, or --prefix for plain names (not both).');
  }
  const target: DeletionTarget =
    options.prefix !== undefined
      ? { prefix: options.prefix }
      : options.where !== undefined
        ? { counter: counter ?? '', where: whereOf(options.where) }
        : (counter ?? '');
  return withStore(options, async (tally) => {
    const result = await tally.delete(target, {
      dryRun: options.yes !== true,
      requestedBy: cliRequester(),
    });
    if (options.json === true) {
      print(JSON.stringify(result, null, 2));
      return ExitCode.ok;
    }
    for (const name of result.names) print(name);
    const more = result.counters - result.names.length;
    if (more > 0) print(`… and ${plural(more, 'more counter')}`);
    print(
      result.dryRun
        ? `would delete ${plural(result.counters, 'counter')}; run again with --yes to delete`
        : `deleted ${plural(result.counters, 'counter')} (deletion ${result.deletionId ?? ''})`,
    );
    return ExitCode.ok;
  });
}
