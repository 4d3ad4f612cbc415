/**
 * Which counters a query or a listing takes, once checked (engine/query-spec.ts builds it, the
 * store's SQL and the Redis pattern read it): the labelled counters of a base name, filtered by
 * label values, grouped by label keys; or plain names by prefix.
 */
export type Selection =
  | {
      kind: 'labelled';
      base: string;
      /** Sorted by key; values as label values are stored (strings). */
      where: readonly (readonly [string, readonly string[]])[];
      groupBy: readonly string[];
    }
  | { kind: 'plain'; prefix: string };
