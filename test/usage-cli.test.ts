/** `tally usage`: CSV, JSON and table out, --output, and bad input refused with exit 2. */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Tally } from '../src/index.js';
import { runTypeScript } from './support/child-process.js';
import { createDatabase, startRedis, type RedisHandle } from './support/index.js';
import { tallyOn } from './support/tally-store.js';

const cli = new URL('../src/cli/main.ts', import.meta.url);
let redis: RedisHandle;
let tally: Tally;
let env: Record<string, string>;
let dir: string;

beforeAll(async () => {
  redis = await startRedis();
  const postgres = await createDatabase();
  const keyPrefix = `cli${randomBytes(4).toString('hex')}`;
  tally = await tallyOn(redis.url, postgres, { shards: 2, keyPrefix });
  env = {
    REDIS_URL: redis.url,
    DATABASE_URL: postgres,
    TALLY_SHARDS: '2',
    TALLY_KEY_PREFIX: keyPrefix,
  };
  dir = await mkdtemp(join(tmpdir(), 'tally-usage-'));
  const at = Date.parse('2026-11-03T10:00:00Z');
  await tally.incr({ name: 'api_calls', labels: { tenant: 'acme' } }, 5, { at });
  await tally.flush();
  await tally.incr({ name: 'api_calls', labels: { tenant: 'acme' } }, 2, { at });
  await tally.incr({ name: 'api_calls', labels: { tenant: 'globex' } }, 3, { at });
});
afterAll(async () => {
  await tally.close();
  await redis.stop();
  await rm(dir, { recursive: true, force: true });
});

const usage = (args: string[]) => runTypeScript(cli, ['usage', ...args], env);
const november = ['--from', '2026-11-01', '--to', '2026-12-01'];

describe('tally usage', () => {
  it('writes CSV (not a terminal), JSON, a table, and to --output', async () => {
    const csv = await usage([
      'api_calls',
      '--group-by',
      'tenant',
      ...november,
      '--granularity',
      'month',
    ]);
    expect([csv.code, csv.stdout]).toEqual([
      0,
      'tenant,bucket_start,value\r\nacme,2026-11-01T00:00:00.000Z,7\r\nglobex,2026-11-01T00:00:00.000Z,3\r\n',
    ]);
    const json = await usage([
      'api_calls',
      '--group-by',
      'tenant',
      ...november,
      '--granularity',
      'total',
      '--format',
      'json',
      '--order-by',
      'value',
      '--limit',
      '1',
    ]);
    expect(JSON.parse(json.stdout)).toEqual([
      {
        labels: { tenant: 'acme' },
        value: 7,
        buckets: [{ start: '2026-11-01T00:00:00.000Z', value: 7 }],
      },
    ]);
    expect(json.stderr).toMatch(/more rows follow: --cursor \S+/);
    const table = await usage([
      'api_calls',
      '--where',
      'tenant=globex',
      ...november,
      '--granularity',
      'total',
      '--format',
      'table',
    ]);
    expect(table.stdout).toBe('value\n    3\n');
    const file = join(dir, 'usage.csv');
    const written = await usage([
      'api_calls',
      '--group-by',
      'tenant',
      ...november,
      '--time-zone',
      'Europe/Berlin',
      '--output',
      file,
    ]);
    expect([written.code, written.stdout]).toEqual([0, '']);
    const lines = (await readFile(file, 'utf8')).split('\r\n');
    expect(lines[0]).toBe('tenant,bucket_start,value');
    expect(lines).toContain('acme,2026-11-02T23:00:00.000Z,7');
    expect(lines).toHaveLength(1 + 2 * 30 + 1);
  });

  it('refuses bad input with exit 2, and writes no file', async () => {
    const file = join(dir, 'refused.csv');
    for (const args of [
      ['api_calls', ...november, '--granularity', 'week'],
      ['api_calls', '--from', '2026-12-01', '--to', '2026-11-01'],
      ['api_calls', ...november, '--time-zone', 'Mars/Olympus'],
      ['api_calls', ...november, '--group-by', 'bad key'],
      ['api_calls', ...november, '--where', 'tenant'],
      ['api_calls', ...november, '--cursor', 'garbage'],
      ['api_calls', ...november, '--format', 'xml'],
      ['api_calls', ...november, '--time-zone', 'Asia/Kolkata'],
      ['--prefix', 'p', 'api_calls', ...november],
    ]) {
      const refused = await usage([...args, '--output', file]);
      expect([refused.code, args]).toEqual([2, args]);
      expect(refused.stderr).toMatch(/^tally: .+\[VALIDATION\]$/m);
    }
    expect(await readdir(dir)).not.toContain('refused.csv');
  });
});
