import { describe, expect, it } from 'vitest';
import { closeInOrder, strictInteger } from '../../src/process/lifecycle.js';

describe('closeInOrder', () => {
  it('runs every step in order, even after one fails, and names every failure', async () => {
    const ran: string[] = [];
    const step = (name: string, fails: boolean) =>
      [
        name,
        () => {
          ran.push(name);
          if (fails) throw new Error(`${name} broke`);
        },
      ] as const;
    const closing = closeInOrder([
      step('jobs', false),
      step('queue', true),
      step('engine', false),
      step('connection', true),
    ]);
    await expect(closing).rejects.toThrow(
      'Closing failed at queue (queue broke), connection (connection broke); every other step ran.',
    );
    expect(ran).toEqual(['jobs', 'queue', 'engine', 'connection']);
    const failure = (await closing.catch((error: unknown) => error)) as AggregateError;
    expect(failure.errors.map((error) => (error as Error).message)).toEqual([
      'queue broke',
      'connection broke',
    ]);
  });

  it('resolves when every step does, awaiting each before the next', async () => {
    const ran: string[] = [];
    await closeInOrder([
      [
        'slow',
        () =>
          new Promise<void>((resolve) => {
            setImmediate(() => {
              ran.push('slow');
              resolve();
            });
          }),
      ],
      ['fast', () => ran.push('fast')],
    ]);
    expect(ran).toEqual(['slow', 'fast']);
  });
});

describe('strictInteger', () => {
  it('takes plain decimal digits only, within the range', () => {
    expect(strictInteger('16', 'N', 1, 100)).toBe(16);
    for (const raw of ['0x10', '16.0', '1e1', ' 16', '', '101', '0']) {
      expect(() => strictInteger(raw, 'N', 1, 100), raw).toThrow(/N/);
    }
  });
});
