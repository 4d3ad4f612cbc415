import { Gauge, type Registry } from 'prom-client';
import type { RedisDurability } from './durability.js';

/**
 * `tally_redis_settings_accepted`: 1 while Redis' persistence and eviction settings, as last
 * read, are accepted by the process's redisLossAccepted, 0 once a live change makes them unsafe.
 * Shared by the API's and the worker's metrics.
 */
export function registerDurabilityGauge(
  registry: Registry,
  durability: () => RedisDurability,
): void {
  new Gauge({
    name: 'tally_redis_settings_accepted',
    help: "1 while Redis' durability settings are accepted (TALLY_ACCEPT_REDIS_LOSS), 0 when not.",
    registers: [registry],
    collect() {
      this.set(durability().accepted ? 1 : 0);
    },
  });
}
