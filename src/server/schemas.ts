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
/** Usage per time bucket (or window): its start and its value. */
const usageBuckets = {
  type: 'array',
  items: {
    type: 'object',
    required: ['start', 'value'],
    properties: { start: { type: 'string', format: 'date-time' }, value: integer },
  },
} as const;
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

/** An increment's limit: a cap on the total, or a quota per period of a zone's calendar. */
const limit = {
  description:
    'A whole number caps the total. An object caps the total ({ max }) or, with per, the ' +
    "usage in the period of the increment's time (a minute, hour, day or month of timeZone's " +
    'calendar, months starting on anchorDay, its last day when the month is shorter). Hard ' +
    '(default) refuses an increment with by ≥ 0 that would leave the usage above max; soft ' +
    'applies it and answers limitExceeded.',
  oneOf: [
    integer,
    {
      type: 'object',
      required: ['max'],
      additionalProperties: false,
      properties: {
        max: integer,
        per: { type: 'string', enum: ['minute', 'hour', 'day', 'month'] },
        timeZone: { type: 'string', minLength: 1, maxLength: 64, description: 'IANA zone (UTC).' },
        anchorDay: { type: 'integer', minimum: 1, maximum: 31 },
        mode: { type: 'string', enum: ['hard', 'soft'] },
      },
    },
  ],
} as const;
const check = {
  type: 'boolean',
  description: 'Decide only: answer allowed or over-limit for this increment, count nothing.',
} as const;
const at = {
  type: 'string',
  format: 'date-time',
  description: "When the increment happened, for its buckets and its quota's period (now).",
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
      enum: ['applied', 'allowed', 'duplicate', 'over-limit', 'overflow', 'key-reused'],
    },
    // With a limit: the usage it is on (the total, or the period's) after the increment.
    limit: integer,
    usage: integer,
    remaining: { type: 'integer', minimum: 0 },
    periodStart: {
      type: 'string',
      format: 'date-time',
      nullable: true,
      description: 'When the quota period began; null for a cap on the total.',
    },
    resetAt: {
      type: 'string',
      format: 'date-time',
      nullable: true,
      description: 'When the quota period ends; null for a cap on the total.',
    },
    limitExceeded: { type: 'boolean' },
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
              at,
              limit,
              check,
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
  description:
    'With a limit, the answer carries the RateLimit-Policy and RateLimit header fields ' +
    '(draft-ietf-httpapi-ratelimit-headers). A hard refusal is 409 OVER_LIMIT, or 429 with ' +
    'Retry-After (seconds until the period resets) for a periodic limit when overLimitStatus ' +
    'is 429.',
  body: {
    type: 'object',
    additionalProperties: false,
    properties: {
      by: integer,
      idempotencyKey,
      at,
      limit,
      check,
      overLimitStatus: {
        type: 'integer',
        enum: [409, 429],
        description: "A periodic hard limit's refusal: 409 (default) or 429 with Retry-After.",
      },
    },
  },
  response: { 200: incrementResult, 429: errorBody, ...errors },
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
          buckets: usageBuckets,
        },
      },
      ...errors,
    },
  }) as const;

const labelKeyString = {
  type: 'string',
  pattern: '^[A-Za-z_][A-Za-z0-9_]*$',
  maxLength: 64,
} as const;
const labelScalar = {
  oneOf: [{ type: 'string' }, { type: 'number' }, { type: 'boolean' }],
} as const;
const cursor = {
  type: 'string',
  maxLength: 2048,
  description: 'The nextCursor of the page before.',
} as const;
const pageLimit = { type: 'integer', minimum: 1, maximum: 10_000 } as const;
const instant = {
  type: 'string',
  maxLength: 40,
  description:
    'ISO 8601: a date (2026-11-01) or a date-time without an offset is read on the ' +
    "query's time zone's clock; with Z or an offset it is that instant.",
} as const;
const selectionProperties = {
  counter: { ...counterName, description: 'The base name of labelled counters.' },
  prefix: { type: 'string', maxLength: 256, description: 'Plain (unlabelled) names by prefix.' },
} as const;

/** A query's windows and order, the same in its JSON body and in its link. */
const windowProperties = {
  from: instant,
  to: instant,
  granularity: { type: 'string', enum: ['minute', 'hour', 'day', 'month', 'total'] },
  timeZone: { type: 'string', maxLength: 64, description: 'IANA; default UTC.' },
  orderBy: { type: 'string', enum: ['group', 'value'] },
  order: { type: 'string', enum: ['asc', 'desc'] },
} as const;

const usageRow = {
  type: 'object',
  required: ['labels', 'value', 'buckets'],
  properties: {
    counter: { type: 'string', description: 'The plain name (prefix queries).' },
    labels: {
      type: 'object',
      description: "The groupBy labels' values (null: the group's counters lack the label).",
      additionalProperties: { type: 'string', nullable: true },
    },
    value: integer,
    buckets: usageBuckets,
  },
} as const;

const usagePage = {
  type: 'object',
  required: ['rows', 'nextCursor'],
  properties: {
    rows: { type: 'array', items: usageRow },
    nextCursor: { type: 'string', nullable: true },
  },
} as const;

/** A page as JSON, or with Accept: text/csv every row from the cursor on, streamed. */
const usageAnswer = {
  description:
    'JSON: one page. With Accept: text/csv: a header (the groupBy labels, bucket_start unless ' +
    'granularity is total, value), then one line per group and window, streamed.',
  content: {
    'application/json': { schema: usagePage },
    'text/csv': { schema: { type: 'string' } },
  },
} as const;

/** `where` in a JSON body: label → value, or → a list of values (any of them). */
const whereBody = {
  type: 'object',
  maxProperties: 16,
  description: 'label → value, or → a list of values (any of them).',
  additionalProperties: {
    oneOf: [
      ...labelScalar.oneOf,
      { type: 'array', minItems: 1, maxItems: 1000, items: labelScalar },
    ],
  },
} as const;

export const usageQuerySchema = {
  summary: 'Usage of many counters: filtered and grouped by labels, per calendar window',
  description:
    'Exact over flushed, pending and in-flight deltas. JSON answers one page (limit groups); ' +
    'Accept: text/csv streams every group from the cursor on (limit, when given, caps them).',
  body: {
    type: 'object',
    required: ['from', 'to', 'granularity'],
    additionalProperties: false,
    properties: {
      ...selectionProperties,
      where: whereBody,
      groupBy: { type: 'array', maxItems: 8, items: labelKeyString },
      ...windowProperties,
      limit: pageLimit,
      cursor,
    },
  },
  response: { 200: usageAnswer, ...errors },
} as const;

/**
 * The same query as a link: `where` as repeated `where=label=value` (a label repeated: any of
 * its values), `groupBy` comma-separated or repeated.
 */
export const usageLinkSchema = {
  summary: 'Usage of many counters, as a link (GET form of POST /v1/usage:query)',
  querystring: {
    type: 'object',
    required: ['from', 'to', 'granularity'],
    additionalProperties: false,
    properties: {
      ...selectionProperties,
      where: {
        oneOf: [
          { type: 'string', maxLength: 1024 },
          { type: 'array', maxItems: 64, items: { type: 'string', maxLength: 1024 } },
        ],
        description: 'label=value; repeat for more labels, or for any of several values.',
      },
      groupBy: {
        oneOf: [
          { type: 'string', maxLength: 600 },
          { type: 'array', maxItems: 8, items: labelKeyString },
        ],
        description: 'Label keys, comma-separated or repeated.',
      },
      ...windowProperties,
      limit: { type: 'string', pattern: '^[0-9]{1,5}$' },
      cursor,
    },
  },
  response: { 200: usageAnswer, ...errors },
} as const;

const listingQuery = {
  ...selectionProperties,
  where: usageLinkSchema.querystring.properties.where,
  limit: {
    type: 'string',
    pattern: '^[0-9]{1,5}$',
    description: 'Per page: default 100, at most 10,000.',
  },
  cursor,
} as const;

export const counterListSchema = {
  summary: 'List counters: a base name’s labelled counters, or plain names by prefix',
  querystring: { type: 'object', additionalProperties: false, properties: listingQuery },
  response: {
    200: {
      type: 'object',
      required: ['counters', 'nextCursor'],
      properties: {
        counters: {
          type: 'array',
          items: {
            type: 'object',
            required: ['name', 'labels'],
            properties: {
              name: { type: 'string' },
              labels: { type: 'object', additionalProperties: { type: 'string' } },
            },
          },
        },
        nextCursor: { type: 'string', nullable: true },
      },
    },
    ...errors,
  },
} as const;

export const labelValuesSchema = {
  summary: 'The values a label takes among the counters of a base name',
  params: {
    type: 'object',
    required: ['label'],
    properties: { label: labelKeyString },
  },
  querystring: {
    type: 'object',
    required: ['counter'],
    additionalProperties: false,
    properties: {
      counter: selectionProperties.counter,
      where: listingQuery.where,
      prefix: { type: 'string', maxLength: 256, description: 'Only values starting with this.' },
      limit: listingQuery.limit,
      cursor,
    },
  },
  response: {
    200: {
      type: 'object',
      required: ['values', 'nextCursor'],
      properties: {
        values: { type: 'array', items: { type: 'string' } },
        nextCursor: { type: 'string', nullable: true },
      },
    },
    ...errors,
  },
} as const;

const deletionAnswer = {
  type: 'object',
  required: ['deletionId', 'counters', 'names', 'dryRun'],
  properties: {
    deletionId: {
      type: 'string',
      nullable: true,
      description: 'The record in tally.counter_deletions; null for a dry run.',
    },
    counters: { type: 'integer', description: 'How many counters went (or would go).' },
    names: {
      type: 'array',
      items: { type: 'string' },
      description: 'The first 1,000 of them, in byte order.',
    },
    dryRun: { type: 'boolean' },
  },
} as const;

const deletionDescription =
  'Once answered, reads and queries give 0 for the counters, and no flush, retry or reconcile ' +
  'brings back a delta counted before; an increment racing the deletion is deleted with it or ' +
  'counted after it. Recorded in tally.counter_deletions with the token that asked. One ' +
  'deletion at a time per server (503 BUSY otherwise).';

export const deleteOneSchema = {
  summary: 'Delete one counter',
  description: deletionDescription,
  params: counterParams,
  querystring: {
    type: 'object',
    additionalProperties: false,
    properties: {
      dryRun: {
        type: 'string',
        enum: ['true', 'false'],
        description: 'true: only say what would go.',
      },
    },
  },
  response: { 200: deletionAnswer, ...errors },
} as const;

export const deleteSelectionSchema = {
  summary:
    "Delete counters: a base name's labelled counters matching where, or plain names by prefix",
  description: deletionDescription,
  body: {
    type: 'object',
    additionalProperties: false,
    properties: {
      ...selectionProperties,
      where: whereBody,
      dryRun: { type: 'boolean', description: 'Only say what would go.' },
    },
  },
  response: { 200: deletionAnswer, ...errors },
} as const;
