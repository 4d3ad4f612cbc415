import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Named points in the flush where a test can make the process kill itself (SIGKILL, nothing
 * runs after it) or stall, to prove that recovery from each point is exact and that shutdown
 * waits for a flush in progress. Armed through the environment of the process:
 *   TALLY_FAULT_POINT=<point>         kill -9 at the point
 *   TALLY_FAULT_DELAY=<point>:<ms>    wait that long at the point
 * Unarmed, a point costs two comparisons.
 */
export type FaultPoint =
  'before-snapshot' | 'after-snapshot' | 'mid-transaction' | 'after-commit' | 'during-acknowledge';

export function reachFaultPoint(point: FaultPoint): Promise<void> | undefined {
  if (process.env.TALLY_FAULT_POINT === point) process.kill(process.pid, 'SIGKILL');
  const delay = process.env.TALLY_FAULT_DELAY;
  if (delay?.startsWith(`${point}:`) === true) return sleep(Number(delay.slice(point.length + 1)));
  return undefined;
}

/**
 * A flush broken on purpose, for the fault checker's own test (it must catch the loss):
 *   TALLY_TEST_BREAK_FLUSH=acknowledge-before-commit   forget the batch in Redis before
 *                                                      PostgreSQL holds it
 */
export function brokenOnPurpose(breakage: 'acknowledge-before-commit'): boolean {
  return process.env.TALLY_TEST_BREAK_FLUSH === breakage;
}
