/**
 * Runs `work` for every item, at most `limit` at a time, handing items out in order. The first
 * failure stops the handing out; it is thrown once every item under way is done, so nothing
 * is left running (or holding a lock) behind the caller's back.
 */
export async function forEachLimited<T>(
  items: readonly T[],
  limit: number,
  work: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failed = false;
  const lane = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const item = items[next++] as T;
      try {
        await work(item);
      } catch (error) {
        failed = true;
        throw error;
      }
    }
  };
  const lanes = await Promise.allSettled(
    Array.from({ length: Math.min(limit, items.length) }, lane),
  );
  for (const result of lanes) if (result.status === 'rejected') throw result.reason;
}

/**
 * Runs tasks one at a time, in the order they were handed in, whether each succeeds or fails.
 */
export class SerialQueue {
  private last: Promise<unknown> = Promise.resolve();

  run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.last.then(task);
    this.last = result.catch(() => undefined);
    return result;
  }
}

/**
 * `compute`, shared: callers within `ttlMs` of a computation's start get its promise instead of
 * starting another, so an endpoint anyone may call (readiness, a scrape) costs the servers at
 * most one computation per `ttlMs`, however often it is called.
 */
export function sharedFor<T>(ttlMs: number, compute: () => Promise<T>): () => Promise<T> {
  let latest: { startedAt: number; result: Promise<T> } | undefined;
  return () => {
    const now = Date.now();
    if (latest === undefined || now - latest.startedAt >= ttlMs) {
      latest = { startedAt: now, result: compute() };
    }
    return latest.result;
  };
}
