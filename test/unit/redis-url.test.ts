import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../src/errors.js';
import { redactSecrets } from '../../src/process/logging.js';
import { parseRedisUrl } from '../../src/redis/redis-url.js';

describe('parseRedisUrl', () => {
  it('keeps a one-server URL as it is, for ioredis to parse', () => {
    expect(parseRedisUrl('rediss://u:p%40ss@cache.internal:6380/2')).toEqual({
      topology: 'single',
      url: 'rediss://u:p%40ss@cache.internal:6380/2',
    });
  });

  it('reads a cluster: seeds, default ports, IPv6, credentials, TLS', () => {
    expect(parseRedisUrl('rediss+cluster://:s%3Acret@a:7000,b,[::1]:7002')).toEqual({
      topology: 'cluster',
      seeds: [
        { host: 'a', port: 7000 },
        { host: 'b', port: 6379 },
        { host: '::1', port: 7002 },
      ],
      credentials: { password: 's:cret' },
      tls: true,
    });
  });

  it('reads a Sentinel set: sentinels, the primary, its own credentials', () => {
    expect(
      parseRedisUrl(
        'redis+sentinel://app:pw@s1:26379,s2/my%20primary?sentinelPassword=spw&sentinelUsername=su',
      ),
    ).toEqual({
      topology: 'sentinel',
      sentinels: [
        { host: 's1', port: 26379 },
        { host: 's2', port: 26379 },
      ],
      primaryName: 'my primary',
      credentials: { username: 'app', password: 'pw' },
      sentinelCredentials: { sentinelPassword: 'spw', sentinelUsername: 'su' },
      tls: false,
    });
  });

  it.each([
    ['', /does not parse as a URL/],
    ['http://a:1', /scheme "http"/],
    ['redis+cluster://', /names no host/],
    ['redis+cluster://a:1,,b:2', /host 2 of the list is not host:port/],
    ['redis+cluster://a:0', /host 1 of the list is not host:port/],
    ['redis+cluster://a b:1', /host 1 of the list is not host:port/],
    ['redis+cluster://a:1/0', /no database or name/],
    ['redis+cluster://a:1?x=1', /no parameters/],
    ['redis+sentinel://a', /ends with \/<name of the primary>/],
    ['redis+sentinel://a/b/c', /ends with \/<name of the primary>/],
    ['redis+sentinel://a/m?db=1', /unknown parameter "db"/],
    ['redis+cluster://:bad%zz@a:1', /%-escape/],
  ])('refuses %j with a typed error naming the forms it takes', (raw, why) => {
    const error = (() => {
      try {
        parseRedisUrl(raw);
      } catch (caught) {
        return caught;
      }
      return undefined;
    })();
    expect(error).toBeInstanceOf(ValidationError);
    expect((error as Error).message).toMatch(why);
    expect((error as Error).message).toMatch(/redis\+cluster:\/\/host1:port1.*redis\+sentinel:/);
  });

  it('never repeats the string (it may hold a password), not even a password left unescaped', () => {
    for (const raw of ['redis+cluster://u:hun/ter2@a:1', 'redis+cluster://u:hun?ter2@a:1']) {
      expect(() => parseRedisUrl(raw)).toThrow(ValidationError);
      expect(() => parseRedisUrl(raw)).not.toThrow(/hun|ter2/);
    }
    // An unescaped @ in the password: the credentials end at the last @.
    expect(parseRedisUrl('redis+cluster://u:p@ss@h1:7000')).toMatchObject({
      credentials: { username: 'u', password: 'p@ss' },
      seeds: [{ host: 'h1', port: 7000 }],
    });
    expect(() => parseRedisUrl('redis+cluster://u:hunter2@a:1/x')).toThrow(/no database or name/);
    expect(() => parseRedisUrl('redis+cluster://u:hunter2@a:1/x')).not.toThrow(/hunter2/);
  });

  it('logs redact the passwords of every form', () => {
    expect(redactSecrets('redis+cluster://u:hunter2@a:1,b:2')).toBe(
      'redis+cluster://u:***@a:1,b:2',
    );
    expect(redactSecrets('redis+sentinel://a/m?sentinelPassword=hunter2')).toBe(
      'redis+sentinel://a/m?sentinelPassword=***',
    );
  });
});
