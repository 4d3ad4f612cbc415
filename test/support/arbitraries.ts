import fc from 'fast-check';
import { granularities } from '../../src/counters/buckets.js';

/** fast-check inputs the unit tests of buckets, tags and batch rows share. */
export const someGranularities = fc.subarray([...granularities], { minLength: 1 });
export const anInstant = fc.integer({ min: Date.UTC(2020, 0, 1), max: Date.UTC(2030, 0, 1) });
export const aCounter = fc
  .string({ minLength: 1, maxLength: 12 })
  .filter((s) => !s.includes('\u001f'));

/** Label values: any text a name may hold, quotes, backslashes and braces more often. */
const aLabelValue = fc
  .array(fc.oneof(fc.constantFrom('"', '\\', '{', '}', ',', '=', 'é', '\u{1f600}'), fc.string()), {
    maxLength: 4,
  })
  .map((parts) =>
    Array.from(parts.join('').replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, ''))
      .slice(0, 12)
      .join(''),
  )
  // Whole code points only: a lone surrogate is not a name.
  .filter((value) => value.isWellFormed());

/** Labels of a counter: up to four keys. */
export const someLabels = fc.dictionary(
  fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,6}$/),
  aLabelValue,
  { maxKeys: 4 },
);

/**
 * Strings shaped like counter names: canonical labelled names, and plain names that look
 * labelled but are not (keys out of order or repeated, other escapes, stray braces).
 */
export const aNameLikeLabelled = fc.oneof(
  fc
    .record({ base: fc.stringMatching(/^[a-z][a-z_:.]{0,8}$/), labels: someLabels })
    .map(({ base, labels }) => ({ base, labels })),
  fc
    .array(fc.constantFrom('a', 'b', '{', '}', '"', '\\', '=', ',', 'k', 'x', '\\n', ' '), {
      minLength: 1,
      maxLength: 24,
    })
    .map((parts) => ({ raw: parts.join('') })),
);
