// What a benchmark reports: raw figures, and checks of a target (a ratio against a baseline
// measured in the same run, or a bound).

export interface Check {
  /** The row of the benchmarks table this answers. */
  benchmark: string;
  /** What was measured, readable: "5.1× raw HINCRBY (1.2M/s vs 236k/s)". */
  measured: string;
  target: string;
  met: boolean;
}

export interface BenchmarkResult {
  name: string;
  /** Raw figures (operations per second, milliseconds, bytes), for the JSON file. */
  figures: Record<string, number>;
  checks: Check[];
  /** Throughput against concurrency, per system, for the chart. */
  series?: Record<string, { concurrency: number; perSecond: number }[]>;
}

/** 1234567 → "1.23M", 12345 → "12.3k". */
export function human(value: number): string {
  if (value >= 1e6) return `${(value / 1e6).toFixed(2)}M`;
  if (value >= 1e4) return `${(value / 1e3).toFixed(1)}k`;
  if (value >= 100) return value.toFixed(0);
  return value.toFixed(2);
}

/** A check of `value / baseline ≥ minimum`. */
export function ratioCheck(
  benchmark: string,
  value: number,
  baseline: number,
  baselineName: string,
  minimum: number,
): Check {
  const ratio = value / baseline;
  return {
    benchmark,
    measured: `${ratio.toFixed(2)}× ${baselineName} (${human(value)}/s vs ${human(baseline)}/s)`,
    target: `≥ ${minimum}× ${baselineName}`,
    met: ratio >= minimum,
  };
}
