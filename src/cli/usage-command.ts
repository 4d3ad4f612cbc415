import { createWriteStream } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import {
  groupByOf,
  whereOf,
  type QueryGranularity,
  type UsageQueryInput,
  type UsageRow,
} from '../engine/query-spec.js';
import { ValidationError } from '../errors.js';
import { csvColumns, usageCsv, usageJson, usageRecords } from '../export/usage-output.js';
import { strictInteger } from '../process/lifecycle.js';
import type { Tally } from '../tally.js';
import { ExitCode } from './exit-codes.js';
import { openStore, type StoreOptions } from './store-options.js';

export interface UsageCommandOptions extends StoreOptions {
  prefix?: string;
  where?: string[];
  groupBy?: string;
  from: string;
  to: string;
  granularity: string;
  timeZone?: string;
  orderBy?: string;
  order?: string;
  limit?: string;
  cursor?: string;
  format?: string;
  output?: string;
}

const formats = ['table', 'csv', 'json'] as const;
type Format = (typeof formats)[number];

/** The query the command line describes (the engine checks it, as it checks every query). */
function queryOf(counter: string | undefined, options: UsageCommandOptions): UsageQueryInput {
  return {
    ...(counter === undefined ? {} : { counter }),
    ...(options.prefix === undefined ? {} : { prefix: options.prefix }),
    ...(options.where === undefined ? {} : { where: whereOf(options.where) }),
    ...(options.groupBy === undefined ? {} : { groupBy: groupByOf(options.groupBy) }),
    from: options.from,
    to: options.to,
    granularity: options.granularity as QueryGranularity,
    ...(options.timeZone === undefined ? {} : { timeZone: options.timeZone }),
    ...(options.orderBy === undefined ? {} : { orderBy: options.orderBy as 'group' | 'value' }),
    ...(options.order === undefined ? {} : { order: options.order as 'asc' | 'desc' }),
    ...(options.limit === undefined
      ? {}
      : { limit: strictInteger(options.limit, '--limit', 1, 10_000) }),
    ...(options.cursor === undefined ? {} : { cursor: options.cursor }),
  };
}

function formatOf(options: UsageCommandOptions): Format {
  const terminal = options.output === undefined && process.stdout.isTTY;
  const format = options.format ?? (terminal ? 'table' : 'csv');
  if (!(formats as readonly string[]).includes(format)) {
    throw new ValidationError(`--format ${JSON.stringify(format)}: use table, csv or json.`);
  }
  return format as Format;
}

/** Rows written as they come; columns as wide as the first thousand rows need. */
async function* usageTable(
  query: UsageQueryInput,
  rows: AsyncIterable<UsageRow>,
): AsyncGenerator<string> {
  const header = csvColumns(query);
  const shown = (record: (string | null)[]) => record.map((cell) => (cell === null ? '-' : cell));
  const widths = header.map((name) => name.length);
  let lines: string[][] | undefined = [];
  const format = (record: string[]) =>
    record
      .map((cell, i) =>
        i === record.length - 1 ? cell.padStart(widths[i] ?? 0) : cell.padEnd(widths[i] ?? 0),
      )
      .join('  ')
      .trimEnd() + '\n';
  const release = function* (pending: string[][]) {
    yield format(header);
    for (const record of pending) yield format(record);
  };
  for await (const row of rows) {
    for (const record of usageRecords(query, row).map(shown)) {
      if (lines === undefined) {
        yield format(record);
        continue;
      }
      lines.push(record);
      record.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
      if (lines.length === 1_000) {
        yield* release(lines);
        lines = undefined;
      }
    }
  }
  if (lines !== undefined) yield* release(lines);
}

/**
 * Writes chunks, waiting whenever the destination asks to (a slow pipe, a full disk buffer).
 * The destination is opened once the first chunk is ready: a query refused (bad input, a store
 * unreachable) leaves no file behind.
 */
async function writeAll(open: () => Writable, chunks: AsyncGenerator<string>): Promise<void> {
  let next = await chunks.next();
  const out = open();
  try {
    for (; next.done !== true; next = await chunks.next()) {
      if (!out.write(next.value)) await once(out, 'drain');
    }
  } finally {
    if (out !== process.stdout) {
      out.end();
      await once(out, 'close');
    }
  }
}

/** Counts rows as they pass, and shows the count on a terminal (stderr) now and then. */
async function* withProgress(rows: AsyncIterable<UsageRow>): AsyncGenerator<UsageRow> {
  const terminal = process.stderr.isTTY;
  let count = 0;
  let shownAt = Date.now();
  for await (const row of rows) {
    count++;
    if (terminal && Date.now() - shownAt > 500) {
      process.stderr.write(`\r${count.toLocaleString('en')} groups…`);
      shownAt = Date.now();
    }
    yield row;
  }
  if (terminal && count > 0) process.stderr.write(`\r${count.toLocaleString('en')} groups.  \n`);
}

/** The rows a command asks for: every row streamed, or the top page when ordered by value. */
async function* rowsOf(tally: Tally, query: UsageQueryInput): AsyncGenerator<UsageRow> {
  if (query.orderBy === 'value') {
    const page = await tally.query(query);
    yield* page.rows;
    if (page.nextCursor !== null) {
      process.stderr.write(`more rows follow: --cursor ${page.nextCursor}\n`);
    }
    return;
  }
  yield* tally.queryStream(query);
}

/** `tally usage`: a usage query's rows as a table, CSV or JSON, to stdout or --output. */
export async function usageCommand(counter: string | undefined, options: UsageCommandOptions) {
  const query = queryOf(counter, options);
  const format = formatOf(options);
  const tally = await openStore(options);
  try {
    const rows = withProgress(rowsOf(tally, query));
    const chunks =
      format === 'csv'
        ? usageCsv(query, rows)
        : format === 'json'
          ? usageJson(rows)
          : usageTable(query, rows);
    const output = options.output;
    if (output === undefined) {
      await writeAll(() => process.stdout, chunks);
    } else {
      // Written beside the file, then renamed: a failure mid-export leaves no truncated file
      // that looks whole.
      const partial = `${output}.partial`;
      try {
        await writeAll(() => createWriteStream(partial), chunks);
        await rename(partial, output);
      } catch (error) {
        await rm(partial, { force: true });
        throw error;
      }
    }
  } finally {
    await tally.close();
  }
  return ExitCode.ok;
}
