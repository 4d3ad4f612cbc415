import { parsePendingField, tagBuckets, type TagBuckets } from './bucket-tags.js';
import { fieldSeparator } from './shard-keys.js';

/** A batch's deltas as the columns of PostgreSQL rows, ready for the flush's unnest upserts. */
export interface BatchRows {
  counters: { names: string[]; deltas: string[] };
  buckets: { names: string[]; granularities: string[]; startsMs: number[]; deltas: string[] };
}

/** Sums two deltas exactly, whatever their size (they are 64-bit in Redis). */
function addExact(a: string, b: string): string {
  const sum = Number(a) + Number(b);
  return Number.isSafeInteger(sum) ? String(sum) : (BigInt(a) + BigInt(b)).toString();
}

/**
 * Expands a batch's pending fields (`<bucket tag><counter>` → delta) into total rows, one per
 * counter, and bucket rows, one per counter and bucket. A counter with deltas under several
 * tags (an hour boundary fell inside the batch) has its deltas summed into its total and into
 * every bucket the tags share. Deltas stay decimal strings, exact whatever their size.
 *
 * Rows come in key order (the fields sorted): the upserts then visit neighbouring index keys
 * one after the other.
 */
export function batchRows(deltas: Readonly<Record<string, string>>): BatchRows {
  const tags = new Map<string, TagBuckets>();
  const totals = new Map<string, string>();
  const buckets = new Map<
    string,
    { counter: string; granularity: string; startMs: number; delta: string }
  >();
  for (const field of Object.keys(deltas).sort()) {
    const delta = deltas[field] ?? '0';
    const { tag, counter } = parsePendingField(field);
    let tagged = tags.get(tag);
    if (tagged === undefined) {
      tagged = tagBuckets(tag);
      tags.set(tag, tagged);
    }
    const total = totals.get(counter);
    totals.set(counter, total === undefined ? delta : addExact(total, delta));
    tagged.granularities.forEach((granularity, index) => {
      const startMs = tagged.starts[index] ?? Number.NaN;
      const key = `${granularity}${fieldSeparator}${startMs}${fieldSeparator}${counter}`;
      const row = buckets.get(key);
      if (row === undefined) buckets.set(key, { counter, granularity, startMs, delta });
      else row.delta = addExact(row.delta, delta);
    });
  }
  const rows = [...buckets.values()];
  return {
    counters: { names: [...totals.keys()], deltas: [...totals.values()] },
    buckets: {
      names: rows.map((row) => row.counter),
      granularities: rows.map((row) => row.granularity),
      startsMs: rows.map((row) => row.startMs),
      deltas: rows.map((row) => row.delta),
    },
  };
}
