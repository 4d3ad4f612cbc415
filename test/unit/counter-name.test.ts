import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalName, parseCounterName, validateName } from '../../src/counters/counter-name.js';
import { aNameLikeLabelled } from '../support/arbitraries.js';

describe('counter names', () => {
  it('accepts 1–256 bytes of UTF-8 without control characters', () => {
    expect(validateName('ü'.repeat(128))).toHaveLength(128); // 256 bytes
    expect(() => validateName('ü'.repeat(129))).toThrow(/1 to 256 bytes/);
    expect(() => validateName('')).toThrow(/1 to 256 bytes/);
    expect(() => validateName('a\u0000b')).toThrow(/control, format or separator character/);
    expect(() => validateName('a\u0085b')).toThrow(/control, format or separator character/);
    // Format and separator characters reorder or hide text in terminals and logs; the message
    // names them without printing them.
    for (const character of ['\u202e', '\ufeff', '\u2028', '\u2029', '\u200b', '\u00ad']) {
      let message = '';
      try {
        validateName(`invoice${character}txt`);
      } catch (error) {
        message = (error as Error).message;
      }
      expect(message).toMatch(/format or separator character/);
      expect(message).not.toContain(character);
      expect(message).toContain(`\\u${character.codePointAt(0)?.toString(16).padStart(4, '0')}`);
    }
    expect(validateName('caf\u00e9 \u{1f600}')).toBe('caf\u00e9 \u{1f600}');
    expect(() => validateName('\ud800')).toThrow(/lone surrogate/);
  });

  it('canonicalises labels whatever their order', () => {
    fc.assert(
      fc.property(
        fc.dictionary(fc.stringMatching(/^[a-z_][a-z0-9_]{0,8}$/), fc.string({ maxLength: 8 }), {
          maxKeys: 5,
        }),
        (labels) => {
          const reversed = Object.fromEntries(Object.entries(labels).reverse());
          expect(canonicalName({ name: 'n', labels })).toBe(
            canonicalName({ name: 'n', labels: reversed }),
          );
        },
      ),
    );
    expect(canonicalName({ name: 'api', labels: { b: 1, a: 'x"y' } })).toBe('api{a="x\\"y",b="1"}');
    expect(() => canonicalName({ name: 'api', labels: { 'bad key': 1 } })).toThrow(/Label key/);
  });
});

describe('parseCounterName', () => {
  it('gives back the base and labels canonicalName was given, as strings', () => {
    fc.assert(
      fc.property(aNameLikeLabelled, (name) => {
        if ('raw' in name) return;
        const canonical = canonicalName({ name: name.base, labels: name.labels });
        const parsed = parseCounterName(canonical);
        const labelled = Object.keys(name.labels).length > 0;
        expect(parsed).toEqual({
          base: labelled ? name.base : canonical,
          labels: labelled ? name.labels : undefined,
        });
      }),
    );
  });

  it('reads a name as labelled only when it is the canonical form of its labels', () => {
    fc.assert(
      fc.property(aNameLikeLabelled, (name) => {
        const raw =
          'raw' in name ? name.raw : canonicalName({ name: name.base, labels: name.labels });
        const { base, labels } = parseCounterName(raw);
        if (labels !== undefined) expect(canonicalName({ name: base, labels })).toBe(raw);
        else expect(base).toBe(raw);
      }),
    );
    expect(parseCounterName('api{b="1",a="2"}').labels).toBeUndefined();
    expect(parseCounterName('api{a="1",a="2"}').labels).toBeUndefined();
    expect(parseCounterName('api{a="\\n"}').labels).toBeUndefined();
    expect(parseCounterName('api{}').labels).toBeUndefined();
    expect(parseCounterName('api{a="}"}')).toEqual({ base: 'api', labels: { a: '}' } });
    expect(parseCounterName('api{a="x\\"y",b="\\\\"}')).toEqual({
      base: 'api',
      labels: { a: 'x"y', b: '\\' },
    });
  });
});
