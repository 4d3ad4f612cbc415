import { ValidationError } from '../errors.js';

/** Labels that refine a counter name: `api_calls` + `{ tenant: 'acme' }`. */
export type Labels = Readonly<Record<string, string | number | boolean>>;

/** How a counter is named in calls: a plain name, or a name with labels. */
export type CounterRef = string | { readonly name: string; readonly labels?: Labels };

export const maxNameBytes = 256;

// Control characters (C0, C1, DEL), format characters (bidirectional overrides such as U+202E,
// the BOM, zero-width characters) and line and paragraph separators. Names are shown in logs,
// metrics and terminals, where these hide or reorder text, and Tally uses U+001F internally as
// a separator.
export const controlCharacters = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u;
const controlCharactersEverywhere = new RegExp(controlCharacters.source, 'gu');

/** A name quoted for a message: its control and format characters written as `\uXXXX`. */
export function quoted(name: string): string {
  return JSON.stringify(name).replace(
    controlCharactersEverywhere,
    (character) => `\\u${character.codePointAt(0)?.toString(16).padStart(4, '0') ?? ''}`,
  );
}

/**
 * Throws unless `name` is 1–256 bytes of UTF-8 without control, format or separator characters. `what` names the
 * value in the message ('A counter name', 'An idempotency key').
 */
export function validateName(name: unknown, what = 'A counter name'): string {
  if (typeof name !== 'string') {
    throw new ValidationError(`${what} must be a string, got ${typeof name}.`);
  }
  if (!name.isWellFormed()) {
    throw new ValidationError(`${what} must be valid Unicode (it has a lone surrogate).`);
  }
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes < 1 || bytes > maxNameBytes) {
    throw new ValidationError(
      `${what} must be 1 to ${maxNameBytes} bytes of UTF-8; ${quoted(name.slice(0, 40))} is ${bytes} bytes.`,
    );
  }
  if (controlCharacters.test(name)) {
    throw new ValidationError(
      `${what} ${quoted(name)} contains a control, format or separator character ` +
        '(such as U+202E or U+2028); remove it.',
    );
  }
  return name;
}

const labelKey = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * The one canonical name for a counter with labels: `name{k1="v1",k2="v2"}` with keys sorted and
 * values JSON-escaped, so `{ b: 1, a: 2 }` and `{ a: 2, b: 1 }` are the same counter. A plain
 * name is returned as is.
 */
export function canonicalName(ref: CounterRef): string {
  if (typeof ref === 'string') return validateName(ref);
  const untyped: unknown = ref; // callers from plain JavaScript can pass anything
  if (typeof untyped !== 'object' || untyped === null) {
    throw new ValidationError(`A counter must be a name or { name, labels }, got ${typeof ref}.`);
  }
  const base = validateName(ref.name);
  const labels = Object.entries(ref.labels ?? {});
  if (labels.length === 0) return base;
  if (/[{}]/.test(base)) {
    throw new ValidationError(
      `Counter name ${JSON.stringify(base)} has braces, which labelled names reserve.`,
    );
  }
  const parts = labels
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([key, value]) => {
      if (!labelKey.test(key)) {
        throw new ValidationError(
          `Label key ${JSON.stringify(key)} must match ${String(labelKey)}.`,
        );
      }
      if (!['string', 'number', 'boolean'].includes(typeof value)) {
        throw new ValidationError(`Label ${key} must be a string, number or boolean.`);
      }
      return `${key}=${JSON.stringify(String(value))}`;
    });
  return validateName(`${base}{${parts.join(',')}}`);
}

/** A counter name split into its base and labels; labels are undefined for a plain name. */
export interface ParsedName {
  base: string;
  labels: Record<string, string> | undefined;
}

// One label of a canonical name: a key, then a JSON string whose only escapes are \" and \\
// (names hold no control characters, the only other characters JSON.stringify escapes).
const labelPair = /([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\["\\])*)"/y;
const labelledShape = /^([^{}]+)\{(.+)\}$/s;

/**
 * The base and labels of a canonical labelled name, the inverse of `canonicalName`: any other
 * name (no braces, keys out of order or repeated, other escapes) is plain. Migration 0005's
 * `tally.parse_counter_name` follows the same rules for the store; a test holds the two equal.
 */
export function parseCounterName(name: string): ParsedName {
  const plain = { base: name, labels: undefined };
  const shape = labelledShape.exec(name);
  const base = shape?.[1];
  const body = shape?.[2];
  if (base === undefined || body === undefined) return plain;
  // No prototype: a label may be named `constructor` or `__proto__`.
  const labels: Record<string, string> = Object.create(null) as Record<string, string>;
  let previous = '';
  for (let at = 0; ;) {
    labelPair.lastIndex = at;
    const pair = labelPair.exec(body);
    const key = pair?.[1];
    const escaped = pair?.[2];
    if (key === undefined || escaped === undefined || key <= previous) return plain;
    labels[key] = escaped.replace(/\\(["\\])/g, '$1');
    previous = key;
    at = labelPair.lastIndex;
    if (at === body.length) return { base, labels };
    if (body[at] !== ',') return plain;
    at++;
  }
}
