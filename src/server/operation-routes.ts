import type { FastifyPluginCallback } from 'fastify';
import { sharedFor } from '../engine/concurrency.js';
import type { Tally } from '../tally.js';
import { isAuthenticated } from './auth.js';
import type { HttpMetrics } from './http-metrics.js';

export interface OperationRoutesOptions {
  tally: Tally;
  tokens: readonly string[];
  metrics: HttpMetrics;
}

/** The open routes: probes, scrapers and the API's description answer without a token. */
export const operationRoutes: FastifyPluginCallback<OperationRoutesOptions> = (
  app,
  { tally, tokens, metrics },
  done,
) => {
  const open = { schema: { hide: true }, config: { open: true } };
  app.get('/healthz', open, (_request, reply) => reply.send({ status: 'ok' }));
  // Anyone may call it: one computation a second at most, shared by every caller.
  const readiness = sharedFor(1_000, () => tally.readiness());
  app.get('/readyz', open, async (request, reply) => {
    const found = await readiness();
    // Not ready on a Redis whose settings became unsafe while running (a live CONFIG SET, a
    // failover): traffic should go where counts stay exact.
    const ready =
      found.redis &&
      found.postgres &&
      found.shardsBuilt === found.shards &&
      tally.durability.accepted;
    // Versions and settings help an attacker: without a valid token a probe learns only whether
    // to send traffic here.
    if (!isAuthenticated(request, tokens)) return reply.status(ready ? 200 : 503).send({ ready });
    return reply.status(ready ? 200 : 503).send({
      ready,
      redis: found.redis,
      postgres: found.postgres,
      shardsReconciled: `${found.shardsBuilt}/${found.shards}`,
      durability: tally.durability,
    });
  });
  app.get('/metrics', open, async (_request, reply) =>
    reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()),
  );
  app.get('/openapi.json', open, (_request, reply) => reply.send(app.swagger()));
  done();
};
