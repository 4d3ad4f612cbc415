import type { Granularity } from '../counters/buckets.js';

/**
 * JSON schemas of the API: Fastify validates requests and serialises answers with them, and the
 * OpenAPI document is generated from them, so the three cannot drift apart.
 */
const counterName = {
  type: 'string',
  minLength: 1,
  maxLength: 256,
  description: '1–256 bytes of UTF-8 without control characters; percent-encoded in paths.',
} as const;
/**
 * A counter in a body: its name, or a name with labels, which canonicalise to one name
 * (`api_calls{tenant="acme"}`: keys sorted, values as JSON strings). Answers name the counter
 * by its canonical name, which is also how a labelled counter is named in a path.
 */
const counterRef = {
  description:
    'A counter name, or { name, labels }: labels canonicalise to the name ' +
    '`name{key="value",…}` (keys sorted), which is how answers and paths name the counter.',
  oneOf: [
    counterName,
    {
      type: 'object',
      required: ['name'],
      additionalProperties: false,
      properties: {
        name: counterName,
        labels: {
          type: 'object',
          maxProperties: 16,
          // Keys are checked where names are canonicalised (OpenAPI 3.0 has no propertyNames).
          additionalProperties: {
            oneOf: [{ type: 'string' }, { type: 'number' }, { type: 'boolean' }],
          },
        },
      },
    },
  ],
} as const;

const integer = { type: 'integer', description: 'A whole number within ±(2^53−1).' } as const;
const idempotencyKey = {
  type: 'string',
  minLength: 1,
  maxLength: 256,
  description: 'A retried increment with the same key (for the same counter) is counted once.',
} as const;

export const errorBody = {
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      properties: {
        code: { type: 'string' },
        message: { type: 'string' },
        details: {},
      },
    },
  },
} as const;

const errors = {
  400: errorBody,
  401: errorBody,
  409: errorBody,
  413: errorBody,
  415: errorBody,
  422: errorBody,
  503: errorBody,
} as const;

const incrementResult = {
  type: 'object',
  required: ['counter', 'value', 'duplicate', 'status'],
  properties: {
    counter: { type: 'string' },
    value: integer,
    duplicate: { type: 'boolean' },
    status: {
      type: 'string',
      enum: ['applied', 'duplicate', 'over-limit', 'overflow', 'key-reused'],
    },
  },
} as const;

export const maxBatchDefault = 1_000;

export function incrementBatchSchema(maxBatch: number) {
  return {
    summary: 'Apply a batch of increments',
    description:
      'The batch is validated whole before anything is applied. Each item reports its own ' +
      'status. A 503 may follow a partial application: retry with the same idempotency keys.',
    body: {
      type: 'object',
      required: ['increments'],
      additionalProperties: false,
      properties: {
        increments: {
          type: 'array',
          minItems: 1,
          maxItems: maxBatch,
          items: {
            type: 'object',
            required: ['counter'],
            additionalProperties: false,
            properties: {
              counter: counterRef,
              by: integer,
              idempotencyKey,
              at: { type: 'string', format: 'date-time' },
              limit: integer,
            },
          },
        },
      },
    },
    response: {
      200: {
        type: 'object',
        required: ['results'],
        properties: { results: { type: 'array', items: incrementResult } },
      },
      ...errors,
    },
  } as const;
}

const counterParams = {
  type: 'object',
  required: ['counter'],
  properties: { counter: counterName },
} as const;

export const incrementOneSchema = {
  summary: 'Increment one counter',
  params: counterParams,
  body: {
    type: 'object',
    additionalProperties: false,
    properties: { by: integer, idempotencyKey, limit: integer },
  },
  response: { 200: incrementResult, ...errors },
} as const;

export const readOneSchema = {
  summary: "Read a counter's total",
  params: counterParams,
  response: {
    200: {
      type: 'object',
      required: ['counter', 'value'],
      properties: { counter: { type: 'string' }, value: integer },
    },
    ...errors,
  },
} as const;

export function readManySchema(maxBatch: number) {
  return {
    summary: 'Read the totals of several counters',
    body: {
      type: 'object',
      required: ['counters'],
      additionalProperties: false,
      properties: {
        counters: { type: 'array', minItems: 1, maxItems: maxBatch, items: counterRef },
      },
    },
    response: {
      200: {
        type: 'object',
        required: ['values'],
        properties: { values: { type: 'object', additionalProperties: integer } },
      },
      ...errors,
    },
  } as const;
}

/** The usage route's schema: `granularity` takes only the granularities the store keeps. */
export const usageSchema = (kept: readonly Granularity[]) =>
  ({
    summary: 'Usage of a counter per time bucket',
    params: counterParams,
    querystring: {
      type: 'object',
      required: ['from', 'to', 'granularity'],
      additionalProperties: false,
      properties: {
        from: { type: 'string', format: 'date-time' },
        to: { type: 'string', format: 'date-time' },
        granularity: {
          type: 'string',
          enum: kept,
          description: 'The buckets the store keeps (option buckets, TALLY_BUCKETS).',
        },
      },
    },
    response: {
      200: {
        type: 'object',
        required: ['counter', 'granularity', 'buckets'],
        properties: {
          counter: { type: 'string' },
          granularity: { type: 'string' },
          buckets: {
            type: 'array',
            items: {
              type: 'object',
              required: ['start', 'value'],
              properties: { start: { type: 'string', format: 'date-time' }, value: integer },
            },
          },
        },
      },
      ...errors,
    },
  }) as const;
