/** `35 days`, `5 minutes`, `90 s`: a window as people write it. */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [
    ['days', 86_400_000],
    ['hours', 3_600_000],
    ['minutes', 60_000],
  ] as const) {
    const count = ms / size;
    if (ms >= size && ms % size === 0) return `${count} ${count === 1 ? unit.slice(0, -1) : unit}`;
  }
  return `${ms / 1_000} s`;
}
