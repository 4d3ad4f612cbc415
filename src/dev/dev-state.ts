import { once } from 'node:events';
import { mkdir, open, readFile, unlink, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { TallyError } from '../errors.js';

/**
 * What `tally dev` keeps in its data folder besides the servers' data: who is running on it
 * (`dev.pid`) and the ports its servers had (`ports.json`), so that the next run gives them
 * the same URLs.
 */

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it runs, as another user.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Claims the data folder for this process, or throws at once if another `tally dev` runs on it
 * (two would start a second redis-server on the same AOF, and fail much later). A pid file left
 * by a process that died is taken over. Returns what gives the folder up.
 */
export async function claimDataDir(dataDir: string): Promise<() => Promise<void>> {
  await mkdir(dataDir, { recursive: true });
  const pidFile = join(dataDir, 'dev.pid');
  for (;;) {
    try {
      const file = await open(pidFile, 'wx');
      await file.writeFile(`${process.pid}\n`);
      await file.close();
      return () => unlink(pidFile).catch(() => undefined);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const holder = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
    if (Number.isSafeInteger(holder) && holder > 0 && isRunning(holder)) {
      throw new TallyError(
        'CONFIGURATION',
        `tally dev is already running on ${dataDir} (pid ${holder}): use that one, stop it, ` +
          'or pass another --data-dir.',
      );
    }
    await unlink(pidFile).catch(() => undefined);
  }
}

async function isFree(port: number): Promise<boolean> {
  const server = createServer();
  server.listen(port, '127.0.0.1');
  try {
    await Promise.race([
      once(server, 'listening'),
      once(server, 'error').then(([error]) => {
        throw error;
      }),
    ]);
    return true;
  } catch {
    return false;
  } finally {
    server.close();
  }
}

async function anyFreePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  server.close();
  if (address === null || typeof address === 'string') throw new Error('no free port');
  return address.port;
}

/**
 * The port `name` had in the last run if it is free, else a free one, remembered for the next:
 * the URLs a user exported stay right from run to run.
 */
export async function rememberedPort(dataDir: string, name: 'redis' | 'postgres'): Promise<number> {
  const file = join(dataDir, 'ports.json');
  const ports = JSON.parse(await readFile(file, 'utf8').catch(() => '{}')) as Record<
    string,
    unknown
  >;
  const last = ports[name];
  if (typeof last === 'number' && (await isFree(last))) return last;
  const port = await anyFreePort();
  await writeFile(file, `${JSON.stringify({ ...ports, [name]: port })}\n`);
  return port;
}

/** Nodes of the cluster `tally dev --redis-cluster` starts: 3 primaries, a replica each. */
export const devClusterNodes = 6;

/**
 * The ports of the dev cluster's nodes: the last run's when all are free (with their cluster bus
 * ports, port + 10000), else new ones below 55000, remembered. `fresh`: new ones, so the nodes'
 * saved cluster configuration (which names the old ports) must go.
 */
export async function rememberedClusterPorts(
  dataDir: string,
): Promise<{ ports: number[]; fresh: boolean }> {
  const file = join(dataDir, 'ports.json');
  const saved = JSON.parse(await readFile(file, 'utf8').catch(() => '{}')) as Record<
    string,
    unknown
  >;
  const usable = async (port: number) => (await isFree(port)) && (await isFree(port + 10_000));
  const last = saved['redis-cluster'];
  if (
    Array.isArray(last) &&
    last.length === devClusterNodes &&
    last.every((port) => Number.isSafeInteger(port))
  ) {
    let free = true;
    for (const port of last as number[]) free &&= await usable(port);
    if (free) return { ports: last as number[], fresh: false };
  }
  const ports: number[] = [];
  while (ports.length < devClusterNodes) {
    const port = 20_000 + Math.floor(Math.random() * 35_000);
    if (
      !ports.some((taken) => Math.abs(taken - port) === 10_000 || taken === port) &&
      (await usable(port))
    )
      ports.push(port);
  }
  await writeFile(file, `${JSON.stringify({ ...saved, 'redis-cluster': ports })}\n`);
  return { ports, fresh: true };
}
