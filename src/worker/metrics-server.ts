import { once } from 'node:events';
import { createServer } from 'node:http';
import type { Logger } from 'pino';
import { TallyError } from '../errors.js';
import type { FlushMetrics } from './flush-metrics.js';

export interface MetricsServer {
  readonly port: number | undefined;
  /** /healthz answers 503 from now on (a shutdown is under way). */
  markClosing(): void;
  close(): void;
}

/** The worker's /metrics and /healthz, on `port` (0: a free one) of `host`. */
export async function startMetricsServer(
  metrics: FlushMetrics,
  { port, host }: { port: number; host: string },
  logger: Logger,
): Promise<MetricsServer> {
  let closing = false;
  const server = createServer((request, response) => {
    if (request.url === '/healthz') {
      response.writeHead(closing ? 503 : 200, { 'content-type': 'text/plain' });
      response.end(closing ? 'shutting down\n' : 'ok\n');
      return;
    }
    if (request.url === '/metrics') {
      metrics.render().then(
        ({ contentType, body }) => {
          response.writeHead(200, { 'content-type': contentType });
          response.end(body);
        },
        (error: unknown) => {
          logger.warn({ err: error }, 'metrics collection failed');
          response.writeHead(500).end();
        },
      );
      return;
    }
    response.writeHead(404).end();
  });
  server.listen(port, host);
  try {
    await Promise.race([
      once(server, 'listening'),
      once(server, 'error').then(([error]) => {
        throw error;
      }),
    ]);
  } catch (error) {
    throw new TallyError(
      'CONFIGURATION',
      `Cannot serve metrics on TALLY_METRICS_HOST ${host} TALLY_METRICS_PORT ${port}: ` +
        `${(error as Error).message}.`,
      { cause: error },
    );
  }
  const address = server.address();
  return {
    port: typeof address === 'object' && address !== null ? address.port : undefined,
    markClosing() {
      closing = true;
    },
    close() {
      server.close();
      server.closeAllConnections();
    },
  };
}
