import type { FastifyPluginCallbackJsonSchemaToTs } from '@fastify/type-provider-json-schema-to-ts';
import type { FastifyRequest } from 'fastify';
import type { DeletionResult, DeletionTarget } from '../engine/deletion.js';
import { TallyError } from '../errors.js';
import type { Tally } from '../tally.js';
import { callerOf } from './auth.js';
import { deleteOneSchema, deleteSelectionSchema } from './schemas.js';

export interface DeletionRoutesOptions {
  tally: Tally;
  tokens: readonly string[];
}

/**
 * Deleting counters: one by its path, or a selection by a body. One deletion at a time per
 * server: a selection can take a tenant's every counter, a chunk of each shard at a time under
 * the shard's lock, and two at once would only hold the flushes longer.
 */
export const deletionRoutes: FastifyPluginCallbackJsonSchemaToTs<{
  Options: DeletionRoutesOptions;
}> = (app, { tally, tokens }, done) => {
  let running = false;
  const run = async (request: FastifyRequest, target: DeletionTarget, dryRun: boolean) => {
    if (running) {
      throw new TallyError('BUSY', 'A deletion is running on this server; try again when it ends.');
    }
    running = true;
    try {
      const result: DeletionResult = await tally.delete(target, {
        dryRun,
        requestedBy: callerOf(request, tokens),
      });
      // A plain object for the reply's schema type.
      return { ...result };
    } finally {
      running = false;
    }
  };

  app.delete('/v1/counters/:counter', { schema: deleteOneSchema }, async (request) =>
    run(request, request.params.counter, request.query.dryRun === 'true'),
  );

  // '::' escapes the colon: the path is literally /v1/counters:delete.
  app.post('/v1/counters::delete', { schema: deleteSelectionSchema }, async (request) => {
    const { dryRun, ...selection } = request.body;
    return run(request, selection, dryRun === true);
  });
  done();
};
