import type { Redis } from 'ioredis';

/** How many times Redis has run `command` since its statistics were last reset (CONFIG RESETSTAT). */
export async function commandCalls(redis: Redis, command: string): Promise<number> {
  const stats = await redis.info('commandstats');
  return Number(new RegExp(`^cmdstat_${command}:calls=(\\d+)`, 'm').exec(stats)?.[1] ?? 0);
}
