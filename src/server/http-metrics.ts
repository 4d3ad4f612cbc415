import { Counter, Histogram, Registry } from 'prom-client';

/** The API's Prometheus metrics, on a registry of their own. */
export class HttpMetrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: 'tally_http_requests_total',
    help: 'HTTP requests answered, by method, route and status.',
    labelNames: ['method', 'route', 'status'],
    registers: [this.registry],
  });
  readonly duration = new Histogram({
    name: 'tally_http_request_duration_seconds',
    help: 'Time to answer an HTTP request, by method and route.',
    labelNames: ['method', 'route'],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [this.registry],
  });
  readonly increments = new Counter({
    name: 'tally_increments_total',
    help: 'Increments handled through the API, by result status.',
    labelNames: ['status'],
    registers: [this.registry],
  });
  readonly errors = new Counter({
    name: 'tally_http_errors_total',
    help: 'Error answers, by error code.',
    labelNames: ['code'],
    registers: [this.registry],
  });
}
