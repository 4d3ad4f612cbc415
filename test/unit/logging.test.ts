import { describe, expect, it } from 'vitest';
import { createLogger, redactSecrets } from '../../src/process/logging.js';

describe('redactSecrets', () => {
  it('takes passwords out of URLs, query strings and bearer credentials', () => {
    const cases: [string, string][] = [
      ['redis://u:hunter2pass@host:6379/0', 'redis://u:***@host:6379/0'],
      ['redis://:hunter2pass@host', 'redis://:***@host'],
      ['postgres://app:p@ss@word@db/tally', 'postgres://app:***@db/tally'],
      [
        'see postgresql://a:b@c/d and rediss://e:f@g',
        'see postgresql://a:***@c/d and rediss://e:***@g',
      ],
      ['redis://host/0?password=hunter2pass&db=1', 'redis://host/0?password=***&db=1'],
      ['Authorization: Bearer abcdef0123456789', 'Authorization: Bearer ***'],
      ['redis://host:6379 has no password', 'redis://host:6379 has no password'],
    ];
    for (const [text, redacted] of cases) expect(redactSecrets(text), text).toBe(redacted);
  });

  it('reach every field of a log line, however deep, and the credentials of Redis commands', () => {
    const lines: string[] = [];
    const logger = createLogger({
      level: 'info',
      format: 'json',
      destination: { write: (line: string) => lines.push(line) },
    });
    let deep: Record<string, unknown> = { url: 'redis://u:hunter2pass@host' };
    for (let i = 0; i < 20; i++) deep = { nested: deep };
    const refused = Object.assign(new Error('WRONGPASS'), {
      command: { name: 'hello', args: ['3', 'AUTH', 'u', 'hunter2pass'] },
    });
    logger.warn({ deep, err: refused }, 'see redis://u:hunter2pass@host');
    expect(lines.join('')).toContain('WRONGPASS');
    expect(lines.join('')).not.toContain('hunter2pass');
  });
});
