import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Named points in the flush, in a usage query between its reads, and in a counter deletion
 * between its PostgreSQL and Redis steps, where a test can make the
 * process kill itself (SIGKILL, nothing runs after it) or stall, to prove that recovery from
 * each point is exact, that shutdown waits for a flush in progress, and that a query is exact
 * whatever a flush does between its reads. Armed through the environment of the process:
 *   TALLY_FAULT_POINT=<point>                         kill -9 at the point
 *   TALLY_FAULT_DELAY=<point>:<ms>[,<point>:<ms>…]    wait that long at each point
 * Unarmed, a point costs two comparisons.
 */
export type FaultPoint =
  | 'before-snapshot'
  | 'after-snapshot'
  | 'before-transaction'
  | 'mid-transaction'
  | 'after-commit'
  | 'during-acknowledge'
  | 'query-before-snapshot'
  | 'query-after-snapshot'
  | 'delete-after-postgres';

export function reachFaultPoint(point: FaultPoint): Promise<void> | undefined {
  if (process.env.TALLY_FAULT_POINT === point) process.kill(process.pid, 'SIGKILL');
  const delays = process.env.TALLY_FAULT_DELAY;
  if (delays === undefined) return undefined;
  const armed = delays.split(',').find((entry) => entry.startsWith(`${point}:`));
  return armed === undefined ? undefined : sleep(Number(armed.slice(point.length + 1)));
}

/**
 * A flush broken on purpose, for the fault checker's own test (it must catch the loss):
 *   TALLY_TEST_BREAK_FLUSH=acknowledge-before-commit   forget the batch in Redis before
 *                                                      PostgreSQL holds it
 */
export function brokenOnPurpose(breakage: 'acknowledge-before-commit'): boolean {
  return process.env.TALLY_TEST_BREAK_FLUSH === breakage;
}
