import type { Queue } from 'bullmq';
import type { Logger } from 'pino';

export const flushQueueName = 'flush';
const schedulerId = (shard: number) => `flush-shard-${shard}`;

export interface FlushJobData {
  shard: number;
}

/** Creates or updates a shard's scheduler (and its next job); safe from every replica. */
export function upsertScheduler(queue: Queue, flushIntervalMs: number, shard: number) {
  return queue.upsertJobScheduler(
    schedulerId(shard),
    { every: flushIntervalMs },
    {
      name: 'flush-shard',
      data: { shard } satisfies FlushJobData,
      opts: {
        attempts: 4,
        backoff: { type: 'exponential', delay: flushIntervalMs, jitter: 0.5 },
        removeOnComplete: true,
        removeOnFail: { count: 1_000 },
      },
    },
  );
}

/** How often the schedulers are checked: about 3 round trips per shard each time. */
const schedulerCheckIntervalMs = (flushIntervalMs: number) =>
  Math.min(Math.max(flushIntervalMs, 1_000), 10_000);

/** States in which a scheduler's next job will still run. */
const liveStates = new Set(['delayed', 'waiting', 'prioritized', 'active', 'waiting-children']);

/**
 * The shards whose flushes would never run again: no scheduler, or a scheduler whose next job
 * is gone (BullMQ creates the next job only when the current one starts, so once an evicted or
 * deleted job breaks the chain the scheduler stays and nothing runs, with no log line). A job id
 * of a scheduler is `repeat:<scheduler id>:<next run, ms>` (BullMQ 6).
 */
async function stoppedShards(queue: Queue, shards: number): Promise<number[]> {
  const checks = Array.from({ length: shards }, async (_, shard) => {
    const scheduler = await queue.getJobScheduler(schedulerId(shard));
    if (scheduler?.next === undefined) return shard;
    const jobId = `repeat:${schedulerId(shard)}:${scheduler.next}`;
    const [job, state] = await Promise.all([queue.getJob(jobId), queue.getJobState(jobId)]);
    return job !== undefined && liveStates.has(state) ? undefined : shard;
  });
  return (await Promise.all(checks)).filter((shard) => shard !== undefined);
}

/**
 * Redis lost its data, or evicted or deleted job keys, while we run: a shard whose scheduler or
 * next job is gone would never be flushed again. Puts them back, checking on an interval.
 * Returns the function that stops the checks.
 */
export function reviveStoppedSchedules(
  queue: Queue,
  config: { shards: number; flushIntervalMs: number },
  logger: Logger,
): () => void {
  const watch = setInterval(() => {
    stoppedShards(queue, config.shards)
      .then(async (stopped) => {
        if (stopped.length === 0) return;
        logger.warn({ shards: stopped }, 'flush jobs missing; re-creating their schedulers');
        for (const shard of stopped) await upsertScheduler(queue, config.flushIntervalMs, shard);
      })
      .catch((error: unknown) => {
        logger.warn({ err: error }, 'could not check the flush schedulers');
      });
  }, schedulerCheckIntervalMs(config.flushIntervalMs));
  watch.unref();
  return () => {
    clearInterval(watch);
  };
}
