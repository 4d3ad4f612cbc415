import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, realpathSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { getContainerRuntimeClient } from 'testcontainers';

/** Where the harness gets its servers: binaries on this machine, or a Docker engine. */
export type ServiceBackend = 'local' | 'docker';

function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const candidate = join(dir, name);
    if (dir !== '' && existsSync(candidate)) return candidate;
  }
  return undefined;
}

export function findRedisServer(): string | undefined {
  return onPath('redis-server');
}

/** Debian ships it apart from redis-server (apt-get install redis-sentinel). */
export function findRedisSentinel(): string | undefined {
  return onPath('redis-sentinel');
}

/** The directory holding `initdb` and `postgres`: PATH first, then the newest Debian install. */
export function findPostgresBinDir(): string | undefined {
  const initdb = onPath('initdb');
  // Through symlinks (Debian links initdb into /usr/local/bin): the real directory also holds
  // pg_dump, psql and the rest.
  if (initdb !== undefined && onPath('postgres') !== undefined)
    return dirname(realpathSync(initdb));
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((name) => /^\d+$/.test(name))
    .sort((a, b) => Number(b) - Number(a));
  for (const version of versions) {
    const dir = join(root, version, 'bin');
    if (existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'postgres'))) return dir;
  }
  return undefined;
}

let dockerAnswers: Promise<boolean> | undefined;
function dockerAvailable(): Promise<boolean> {
  dockerAnswers ??= getContainerRuntimeClient().then(
    () => true,
    () => false,
  );
  return dockerAnswers;
}

/**
 * Local binaries when they are installed, else Docker through testcontainers, else a failure
 * that says what to install. Tests never skip because a service is missing.
 * TALLY_TEST_BACKEND=docker forces containers even where binaries exist.
 */
export async function chooseBackend(service: 'Redis' | 'PostgreSQL'): Promise<ServiceBackend> {
  if (process.env.TALLY_TEST_BACKEND === 'docker') return 'docker';
  const local = service === 'Redis' ? findRedisServer() : findPostgresBinDir();
  if (local !== undefined) return 'local';
  if (await dockerAvailable()) return 'docker';
  const install =
    service === 'Redis'
      ? 'redis-server (Debian/Ubuntu: apt-get install redis-server)'
      : 'the PostgreSQL server binaries initdb and postgres (Debian/Ubuntu: apt-get install postgresql)';
  throw new Error(
    `The test suite needs ${service}: install ${install}, or start a Docker engine so the ` +
      'harness can run it in a container.',
  );
}

/** The uid/gid PostgreSQL runs as: ourselves, or the `postgres` user when we are root. */
export function postgresUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }));
  try {
    return { uid: id('-u'), gid: id('-g') };
  } catch (cause) {
    throw new Error(
      'PostgreSQL refuses to run as root and there is no `postgres` user to run it as: ' +
        'create one (useradd --system postgres) or run the tests as another user.',
      { cause },
    );
  }
}
