/**
 * How tally.counter_buckets is split (migrations/0006_partitioned_buckets.sql): one partition
 * per granularity, each split by bucket_start into UTC ranges. A range is as wide as makes the
 * default retentions cost few partitions and drop soon after they pass: minute buckets by day
 * (7 days kept: 8 partitions), hour by month (90 days: 4), day and month by year.
 */
import { granularities, utcDate, type Granularity } from '../counters/buckets.js';

/** One range partition: its table's name and the UTC range [startMs, endMs) it holds. */
export interface PartitionRange {
  granularity: Granularity;
  table: string;
  startMs: number;
  endMs: number;
}

const rangeUnit: Record<Granularity, 'day' | 'month' | 'year'> = {
  minute: 'day',
  hour: 'month',
  day: 'year',
  month: 'year',
};

/** The table of a granularity's partition (its ranges are partitions of it). */
export const granularityTable = (granularity: Granularity) => `counter_buckets_${granularity}`;

/** The partition taking a granularity's rows whose range does not exist. */
export const defaultPartitionTable = (granularity: Granularity) =>
  `counter_buckets_${granularity}_default`;

/** The range partition holding `granularity` buckets starting at `atMs`. */
export function partitionRange(granularity: Granularity, atMs: number): PartitionRange {
  const at = new Date(atMs);
  const year = at.getUTCFullYear();
  const month = at.getUTCMonth();
  const day = at.getUTCDate();
  const unit = rangeUnit[granularity];
  const [startMs, endMs] =
    unit === 'day'
      ? [utcDate(year, month, day), utcDate(year, month, day + 1)]
      : unit === 'month'
        ? [utcDate(year, month, 1), utcDate(year, month + 1, 1)]
        : [utcDate(year, 0, 1), utcDate(year + 1, 0, 1)];
  const digits = (n: number, width: number) => String(n).padStart(width, '0');
  const label =
    digits(year, 4) +
    (unit === 'year' ? '' : digits(month + 1, 2)) +
    (unit === 'day' ? digits(day, 2) : '');
  return { granularity, table: `${granularityTable(granularity)}_p${label}`, startMs, endMs };
}

/** Every range partition from the one holding `fromMs` to the one holding `toMs`, in order. */
export function partitionRanges(
  granularity: Granularity,
  fromMs: number,
  toMs: number,
): PartitionRange[] {
  const ranges: PartitionRange[] = [];
  for (let range = partitionRange(granularity, fromMs); ;) {
    ranges.push(range);
    if (range.endMs > toMs) return ranges;
    range = partitionRange(granularity, range.endMs);
  }
}

const tablePattern = new RegExp(`^counter_buckets_(${granularities.join('|')})_p(\\d{4,8})$`);

/**
 * The range a partition table's name stands for; undefined for a name this layout does not
 * make (the upkeep touches no other table).
 */
export function parsePartitionTable(table: string): PartitionRange | undefined {
  const match = tablePattern.exec(table);
  const granularity = match?.[1] as Granularity | undefined;
  const label = match?.[2];
  if (granularity === undefined || label === undefined) return undefined;
  const width = { day: 8, month: 6, year: 4 }[rangeUnit[granularity]];
  if (label.length !== width) return undefined;
  const atMs = utcDate(
    Number(label.slice(0, 4)),
    width > 4 ? Number(label.slice(4, 6)) - 1 : 0,
    width > 6 ? Number(label.slice(6, 8)) : 1,
  );
  const range = partitionRange(granularity, atMs);
  return range.table === table ? range : undefined;
}
