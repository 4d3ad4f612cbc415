import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import semver from 'semver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDatabase, startRedis } from './support/index.js';

const run = promisify(execFile);
const repoRoot = new URL('..', import.meta.url).pathname;

/**
 * Packs Tally as npm would publish it and unpacks it into a fresh project, its dependencies
 * linked from this checkout: what a user's `npm install tally` gets, without the network.
 */
let project: string;
let bin: string;
let shipped: string[];
beforeAll(async () => {
  project = await mkdtemp(join(tmpdir(), 'tally-package-'));
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', project], {
    cwd: repoRoot,
  });
  const [packed] = JSON.parse(stdout) as [{ filename: string; files: { path: string }[] }];
  shipped = packed.files.map((file) => file.path);
  const modules = join(project, 'node_modules');
  await mkdir(join(modules, 'tally'), { recursive: true });
  await run('tar', [
    '-xzf',
    join(project, packed.filename),
    '-C',
    join(modules, 'tally'),
    '--strip-components=1',
  ]);
  const manifest = JSON.parse(await readFile(join(repoRoot, 'package.json'), 'utf8')) as {
    dependencies: Record<string, string>;
  };
  for (const dependency of Object.keys(manifest.dependencies)) {
    const link = join(modules, dependency);
    await mkdir(dirname(link), { recursive: true }); // scoped packages: node_modules/@scope/
    await symlink(join(repoRoot, 'node_modules', dependency), link);
  }
  bin = join(modules, 'tally', 'bin', 'tally.js');
}, 120_000);

afterAll(async () => {
  await rm(project, { recursive: true, force: true });
});

describe('the supported Node versions', () => {
  it('are accepted by every installed package (npm ci warns EBADENGINE otherwise)', async () => {
    const manifest = JSON.parse(await readFile(join(repoRoot, 'package.json'), 'utf8')) as {
      engines: { node: string };
    };
    const lowest = semver.minVersion(manifest.engines.node)?.version ?? '';
    const lock = JSON.parse(await readFile(join(repoRoot, 'package-lock.json'), 'utf8')) as {
      packages: Record<string, { engines?: { node?: string } }>;
    };
    const refusing = Object.entries(lock.packages)
      .filter(([path, entry]) => {
        const range = entry.engines?.node;
        return path !== '' && range !== undefined && !semver.satisfies(lowest, range);
      })
      .map(([path, entry]) => `${path} (${entry.engines?.node ?? ''})`);
    expect(lowest).toBe('20.19.0');
    expect(refusing).toEqual([]);
  });
});

describe('the published package', () => {
  it('ships the build with its Lua scripts and the migrations, not the sources', () => {
    expect(shipped).toContain('dist/index.js');
    expect(shipped).toContain('dist/redis/lua/increment.lua');
    expect(shipped).toContain('migrations/0001_counters.sql');
    // The licence, and the docs the README links to.
    expect(shipped).toContain('LICENSE');
    expect(shipped).toContain('docs/operations.md');
    expect(
      shipped.filter((path) => path.startsWith('src/') || path.startsWith('dist/src/')),
    ).toEqual([]);
  });

  it('imports from plain Node without a TypeScript loader', async () => {
    const { stdout } = await run(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        "import * as tally from 'tally'; console.log(Object.keys(tally).sort().join(','))",
      ],
      { cwd: project },
    );
    expect(stdout.trim()).toBe(
      'FlushError,IdempotencyKeyReusedError,OverflowError,SchemaError,TallyError,ValidationError,assertSchemaCurrent,' +
        'canonicalName,createTally,expressMetering,' +
        'loadMigrations,migrate,tallyMetering',
    );
  });

  it('counts and flushes from plain Node, with the scripts and migrations it ships', async () => {
    const redis = await startRedis();
    try {
      const url = await createDatabase();
      const script = `
        import { createTally, migrate } from 'tally';
        await migrate(${JSON.stringify(url)});
        const tally = await createTally({
          redis: ${JSON.stringify(redis.url)},
          postgres: ${JSON.stringify(url)},
        });
        const { value } = await tally.incr('installed', 3);
        const [batch] = await tally.flush();
        const total = await tally.get('installed');
        console.log(JSON.stringify({ value, counters: batch.counters, total }));
        await tally.close();
      `;
      const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], {
        cwd: project,
      });
      expect(JSON.parse(stdout)).toEqual({ value: 3, counters: 1, total: 3 });
    } finally {
      await redis.stop();
    }
  });

  it('type-checks in a strict TypeScript project without skipLibCheck', async () => {
    const typed = join(project, 'typed');
    await mkdir(typed, { recursive: true });
    // The user's own @types/node, as any Node TypeScript project has it.
    await mkdir(join(project, 'node_modules', '@types'), { recursive: true });
    await symlink(
      join(repoRoot, 'node_modules', '@types', 'node'),
      join(project, 'node_modules', '@types', 'node'),
    ).catch((error: unknown) => {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    });
    await writeFile(
      join(typed, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          module: 'nodenext',
          target: 'es2022',
          noEmit: true,
          skipLibCheck: false,
          types: ['node'],
        },
        files: ['index.ts'],
      }),
    );
    await writeFile(join(typed, 'package.json'), '{ "type": "module" }\n');
    await writeFile(
      join(typed, 'index.ts'),
      "import { createTally, type Tally } from 'tally';\n" +
        "const tally: Tally = await createTally({ redis: 'redis://127.0.0.1', postgres: 'postgres://127.0.0.1/x' });\n" +
        'await tally.close();\n',
    );
    const tsc = join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc');
    // tsc prints its errors on stdout and exits 2.
    const checked = await run(process.execPath, [tsc, '-p', typed]).catch((error: unknown) => ({
      stdout: (error as { stdout: string }).stdout,
    }));
    expect(checked.stdout).toBe('');
  });

  it("runs the README's library example as written", async () => {
    const readme = await readFile(join(repoRoot, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## Using it as a library'));
    const example = /```js\n([\s\S]*?)```/.exec(section)?.[1];
    expect(example).toContain("from 'tally'");
    const redis = await startRedis();
    try {
      const database = await createDatabase();
      await writeFile(join(project, 'readme-example.mjs'), example ?? '');
      const { stdout } = await run(process.execPath, ['readme-example.mjs'], {
        cwd: project,
        env: { ...process.env, REDIS_URL: redis.url, DATABASE_URL: database },
      });
      expect(stdout).toMatch(
        /^1 applied 9999 \d{4}-\d\d-\d\dT\d\d:00:00\.000Z \{ start: \d{4}-\d\d-\d\dT\d\d:00:00\.000Z, value: 1 \}$/m,
      );
      expect(stdout).toMatch(/^\{ tenant: 'acme' \} 3$/m);
    } finally {
      await redis.stop();
    }
  });

  it('runs `tally --help` and `tally migrate` from its bin', async () => {
    const help = await run(process.execPath, [bin, '--help']);
    expect(help.stdout).toMatch(/Usage: tally/);
    expect(help.stdout).toMatch(/migrate/);

    const url = await createDatabase();
    const first = await run(process.execPath, [bin, 'migrate', '--postgres', url]);
    // Every migration the package ships, from the files it ships.
    const shipped = (await readdir(join(project, 'node_modules', 'tally', 'migrations')))
      .filter((file) => file.endsWith('.sql'))
      .sort()
      .map((file) => file.replace(/\.sql$/, ''));
    expect(shipped.length).toBeGreaterThanOrEqual(4);
    expect(first.stdout).toContain(
      `applied ${shipped.join(', ')}; schema is at version ${shipped.length}`,
    );
    const second = await run(process.execPath, [bin, 'migrate'], {
      env: { ...process.env, DATABASE_URL: url },
    });
    expect(second.stdout).toMatch(/schema is current at version \d+/);
  });

  it('exits 2 with a message on stderr when migrate has no database', async () => {
    const env = { ...process.env };
    delete env.DATABASE_URL;
    const failed = run(process.execPath, [bin, 'migrate'], { env });
    await expect(failed).rejects.toMatchObject({
      code: 2,
      stderr: expect.stringMatching(
        /No --postgres: pass --postgres <url> or set DATABASE_URL/,
      ) as unknown,
    });
  });
});
