import { parsePendingField, tagBuckets, type TagBuckets } from '../redis/bucket-tags.js';
import { fieldSeparator } from '../redis/shard-keys.js';
import type { Granularity } from '../counters/buckets.js';

/** A batch's deltas as the columns of PostgreSQL rows, ready for the flush's unnest upserts. */
export interface BatchRows {
  counters: { names: string[]; deltas: string[] };
  buckets: { names: string[]; granularities: string[]; startsMs: number[]; deltas: string[] };
  /** The granularities the bucket rows have, each once. */
  bucketGranularities: Set<Granularity>;
}

/**
 * Sums two deltas exactly, whatever their size (they are 64-bit in Redis). Doubles only when
 * both are exact as doubles: two inexact ones can add up to a safe-looking wrong sum.
 */
function addExact(a: string, b: string): string {
  const x = Number(a);
  const y = Number(b);
  return Number.isSafeInteger(x) && Number.isSafeInteger(y) && Number.isSafeInteger(x + y)
    ? String(x + y)
    : (BigInt(a) + BigInt(b)).toString();
}

/**
 * Expands a batch's pending fields — `HGETALL`'s flat reply: `<bucket tag><counter>`, delta,
 * … — into total rows, one per
 * counter, and bucket rows, one per counter and bucket. A counter with deltas under several
 * tags (a bucket boundary fell inside the batch) has its deltas summed into its total and into
 * every bucket the tags share. Deltas stay decimal strings, exact whatever their size.
 *
 * Rows come in counter order: the upserts then visit neighbouring index keys one after the
 * other. The fields are sorted whole (tag, then counter), which leaves every tag's counters in
 * order: sorting the parsed counters took 3–4 times as long (their names are slices).
 */
export function batchRows(pairs: readonly string[]): BatchRows {
  const order: number[] = [];
  for (let i = 0; i < pairs.length; i += 2) order.push(i);
  order.sort((a, b) => ((pairs[a] ?? '') < (pairs[b] ?? '') ? -1 : 1));
  const byTag = new Map<string, { counter: string; delta: string }[]>();
  for (const i of order) {
    const delta = pairs[i + 1] ?? '0';
    const { tag, counter } = parsePendingField(pairs[i] ?? '');
    let fields = byTag.get(tag);
    if (fields === undefined) byTag.set(tag, (fields = []));
    fields.push({ counter, delta });
  }
  const [only, ...others] = byTag;
  if (only === undefined) return emptyRows();
  return others.length === 0 ? oneTagRows(only[0], only[1]) : manyTagRows(byTag);
}

function emptyRows(): BatchRows {
  return {
    counters: { names: [], deltas: [] },
    buckets: { names: [], granularities: [], startsMs: [], deltas: [] },
    bucketGranularities: new Set(),
  };
}

/** The usual batch: every delta under one tag, so no two fields share a row. */
function oneTagRows(tag: string, fields: { counter: string; delta: string }[]): BatchRows {
  const { granularities, starts } = tagBuckets(tag);
  const rows = emptyRows();
  for (const granularity of granularities) rows.bucketGranularities.add(granularity);
  for (const { counter, delta } of fields) {
    rows.counters.names.push(counter);
    rows.counters.deltas.push(delta);
    granularities.forEach((granularity, index) => {
      rows.buckets.names.push(counter);
      rows.buckets.granularities.push(granularity);
      rows.buckets.startsMs.push(starts[index] ?? Number.NaN);
      rows.buckets.deltas.push(delta);
    });
  }
  return rows;
}

/** A batch that spans a bucket boundary: fields of one counter are summed where rows meet. */
function manyTagRows(byTag: Map<string, { counter: string; delta: string }[]>): BatchRows {
  const totals = new Map<string, string>();
  const buckets = new Map<
    string,
    { counter: string; granularity: string; startMs: number; delta: string }
  >();
  const rows = emptyRows();
  for (const [tag, fields] of byTag) {
    const { granularities, starts }: TagBuckets = tagBuckets(tag);
    for (const granularity of granularities) rows.bucketGranularities.add(granularity);
    for (const { counter, delta } of fields) {
      const total = totals.get(counter);
      totals.set(counter, total === undefined ? delta : addExact(total, delta));
      granularities.forEach((granularity, index) => {
        const startMs = starts[index] ?? Number.NaN;
        const key = `${counter}${fieldSeparator}${granularity}${fieldSeparator}${startMs}`;
        const row = buckets.get(key);
        if (row === undefined) buckets.set(key, { counter, granularity, startMs, delta });
        else row.delta = addExact(row.delta, delta);
      });
    }
  }
  for (const counter of [...totals.keys()].sort()) {
    rows.counters.names.push(counter);
    rows.counters.deltas.push(totals.get(counter) ?? '0');
  }
  const keys = [...buckets.keys()].sort();
  for (const key of keys) {
    const row = buckets.get(key);
    if (row === undefined) continue;
    rows.buckets.names.push(row.counter);
    rows.buckets.granularities.push(row.granularity);
    rows.buckets.startsMs.push(row.startMs);
    rows.buckets.deltas.push(row.delta);
  }
  return rows;
}
