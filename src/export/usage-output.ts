import type { UsageQueryInput, UsageRow } from '../engine/query-spec.js';

/*
 * Usage rows as text, streamed: CSV (RFC 4180) for spreadsheets and billing imports, and a
 * JSON array. Shared by the HTTP API (Accept: text/csv) and `tally usage`. Rows arrive one
 * group at a time and leave in chunks of about 64 KiB, so an export of a million rows never
 * sits in memory and does not cost a write per line.
 */

const chunkChars = 65_536;

/** A CSV field: quoted when it holds a quote, comma or line break (quotes doubled). */
function csvField(value: string): string {
  return /[",\r\n]/.test(value) ? `"${value.replaceAll('"', '""')}"` : value;
}

/**
 * The columns of a query's CSV: each groupBy label (named as the label; `counter` for plain
 * names by prefix), then `bucket_start` (not for `total`), then `value`.
 */
export function csvColumns(query: UsageQueryInput): string[] {
  const identity = query.prefix !== undefined ? ['counter'] : [...(query.groupBy ?? [])];
  return [...identity, ...(query.granularity === 'total' ? [] : ['bucket_start']), 'value'];
}

/**
 * A row's records, one per window (one for `total`), each as its columns: the identity (null
 * for a label the group's counters lack), then the window's start, then the value.
 */
export function usageRecords(
  query: UsageQueryInput,
  row: UsageRow,
  instant: (start: Date) => string = (start) => start.toISOString(),
): (string | null)[][] {
  const identity =
    row.counter !== undefined
      ? [row.counter]
      : (query.groupBy ?? []).map((label) => row.labels[label] ?? null);
  if (query.granularity === 'total') return [[...identity, String(row.value)]];
  return row.buckets.map((bucket) => [...identity, instant(bucket.start), String(bucket.value)]);
}

/** ISO 8601 of window starts, remembered: every row of an export has the same windows. */
function isoOf(): (start: Date) => string {
  const known = new Map<number, string>();
  return (start) => {
    const ms = start.getTime();
    let text = known.get(ms);
    if (text === undefined) known.set(ms, (text = start.toISOString()));
    return text;
  };
}

/**
 * The CSV of a query's rows: a header, then one line per group and window. An absent label is
 * an empty field; an empty label value is `""`, so the two stay apart.
 */
export async function* usageCsv(
  query: UsageQueryInput,
  rows: AsyncIterable<UsageRow>,
): AsyncGenerator<string> {
  const field = (value: string | null) =>
    value === null ? '' : value === '' ? '""' : csvField(value);
  let chunk = `${csvColumns(query).map(csvField).join(',')}\r\n`;
  const instant = isoOf();
  for await (const row of rows) {
    for (const record of usageRecords(query, row, instant)) {
      chunk += `${record.map(field).join(',')}\r\n`;
    }
    if (chunk.length >= chunkChars) {
      yield chunk;
      chunk = '';
    }
  }
  if (chunk !== '') yield chunk;
}

/** The rows as one JSON array, written as they come. */
export async function* usageJson(rows: AsyncIterable<UsageRow>): AsyncGenerator<string> {
  let chunk = '[';
  let first = true;
  for await (const row of rows) {
    chunk += `${first ? '\n' : ',\n'}${JSON.stringify(row)}`;
    first = false;
    if (chunk.length >= chunkChars) {
      yield chunk;
      chunk = '';
    }
  }
  yield `${chunk}${first ? '' : '\n'}]\n`;
}
