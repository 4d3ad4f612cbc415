import type { FastifyPluginCallback, FastifyRequest } from 'fastify';
import fastifyPlugin from 'fastify-plugin';
import type { CounterRef } from './counters/counter-name.js';
import type { Tally } from './tally.js';

/** Minimal request shape the Express-style middleware needs (Express, Connect, raw node:http). */
export interface IncomingLike {
  method?: string;
  url?: string;
  headers: Record<string, string | string[] | undefined>;
}

export interface MeteringOptions<Request> {
  tally: Tally;
  /** The counter a request counts under (tenant × route, say); undefined: not counted. */
  counter(request: Request): CounterRef | undefined;
  /**
   * true (default): the request waits until Redis has applied its increment, and fails (the
   * error goes to the framework) if it cannot be counted. false: the increment is sent without
   * waiting: no latency added, but an increment that fails, or is still queued for its group
   * commit when the process dies (within one event-loop tick), is not counted; `onError` hears
   * of failures.
   */
  awaitIncrement?: boolean;
  /** Called with increments that failed when not awaited. Default: ignore. */
  onError?(error: unknown, request: Request): void;
}

const metering: FastifyPluginCallback<MeteringOptions<FastifyRequest>> = (app, options, done) => {
  const awaitIncrement = options.awaitIncrement ?? true;
  app.addHook('onRequest', async (request) => {
    const counter = options.counter(request);
    if (counter === undefined) return;
    const increment = options.tally.incr(counter, 1);
    if (awaitIncrement) {
      await increment;
      return;
    }
    increment.catch((error: unknown) => options.onError?.(error, request));
  });
  done();
};

/**
 * Fastify plugin that counts every request of the host API with Tally, in the same process,
 * group-committed with the other increments of the same tick. Registered with fastify-plugin,
 * so its hook applies to every route of the app it is registered on.
 */
export const tallyMetering = fastifyPlugin(metering, { name: 'tally-metering', fastify: '5.x' });

/** The same for Express (and anything with `(req, res, next)` middleware). */
export function expressMetering<Request extends IncomingLike>(
  options: MeteringOptions<Request>,
): (request: Request, response: unknown, next: (error?: unknown) => void) => void {
  const awaitIncrement = options.awaitIncrement ?? true;
  return (request, _response, next) => {
    const counter = options.counter(request);
    if (counter === undefined) {
      next();
      return;
    }
    const increment = options.tally.incr(counter, 1);
    if (awaitIncrement) {
      increment.then(() => {
        next();
      }, next);
      return;
    }
    increment.catch((error: unknown) => options.onError?.(error, request));
    next();
  };
}
