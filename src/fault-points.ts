/**
 * Named points in the flush where a test can make the process kill itself (SIGKILL, nothing
 * runs after it), to prove that recovery from each point is exact. Set TALLY_FAULT_POINT to one
 * of these names in the environment of a process to arm it; unset, a point costs one comparison.
 */
export type FaultPoint =
  'before-snapshot' | 'after-snapshot' | 'mid-transaction' | 'after-commit' | 'during-acknowledge';

export function reachFaultPoint(point: FaultPoint): void {
  if (process.env.TALLY_FAULT_POINT === point) process.kill(process.pid, 'SIGKILL');
}
