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
 * The CSV of a query's rows: a header, then one line per group and window. An absent label is
 * an empty field; an empty label value is `""`, so the two stay apart.
 */
export async function* usageCsv(
  query: UsageQueryInput,
  rows: AsyncIterable<UsageRow>,
): AsyncGenerator<string> {
  const labels = query.prefix !== undefined ? [] : [...(query.groupBy ?? [])];
  const total = query.granularity === 'total';
  let chunk = `${csvColumns(query).map(csvField).join(',')}\r\n`;
  for await (const row of rows) {
    const identity =
      row.counter !== undefined
        ? csvField(row.counter)
        : labels
            .map((label) => {
              const value = row.labels[label];
              return value === null || value === undefined
                ? ''
                : value === ''
                  ? '""'
                  : csvField(value);
            })
            .join(',');
    const lead = labels.length === 0 && row.counter === undefined ? '' : `${identity},`;
    if (total) chunk += `${lead}${row.value}\r\n`;
    else
      for (const bucket of row.buckets)
        chunk += `${lead}${bucket.start.toISOString()},${bucket.value}\r\n`;
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
