import fc from 'fast-check';
import { granularities } from '../../src/counters/buckets.js';

/** fast-check inputs the unit tests of buckets, tags and batch rows share. */
export const someGranularities = fc.subarray([...granularities], { minLength: 1 });
export const anInstant = fc.integer({ min: Date.UTC(2020, 0, 1), max: Date.UTC(2030, 0, 1) });
export const aCounter = fc
  .string({ minLength: 1, maxLength: 12 })
  .filter((s) => !s.includes('\u001f'));
