import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmod, chown, copyFile, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { constants } from 'node:os';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const watchdogPath = fileURLToPath(new URL('./watchdog.sh', import.meta.url));

export interface SupervisedOptions {
  command: string;
  args: readonly string[];
  /** The server's stdout and stderr are appended here. */
  logFile: string;
  /** Sent to the server when the test process that started it goes away. */
  orphanSignal: 'KILL' | 'QUIT';
  /** Removed once the server has exited because its owner went away. */
  cleanupDir?: string;
  /** Run as this user (PostgreSQL refuses to run as root). */
  user?: { uid: number; gid: number };
  /** Resolves once the server accepts work; `startSupervised` returns only then. */
  waitReady: () => Promise<unknown>;
}

/** One server process whose lifetime is tied to the test process (see watchdog.sh). */
export interface SupervisedProcess {
  readonly pid: number;
  /**
   * Resolves with the exit status (128+N when killed by signal N) once the server has exited,
   * keeping this process alive until then.
   */
  waitForExit(): Promise<number>;
  isRunning(): boolean;
  signal(signal: NodeJS.Signals): void;
  /** Lets the watchdog take the server down with its orphan signal and clean up. */
  release(): void;
}

/**
 * The watchdog for a server run as another user: a copy beside its log file, since that user
 * may not reach the checkout (root's home is 0700, and so is a `mktemp -d` folder).
 */
async function watchdogFor(options: SupervisedOptions): Promise<string> {
  if (options.user === undefined) return watchdogPath;
  const copy = join(dirname(options.logFile), 'watchdog.sh');
  await copyFile(watchdogPath, copy);
  await chmod(copy, 0o755);
  await chown(copy, options.user.uid, options.user.gid);
  return copy;
}

export async function startSupervised(options: SupervisedOptions): Promise<SupervisedProcess> {
  const watchdog = spawn(
    'bash',
    [
      await watchdogFor(options),
      options.orphanSignal,
      options.logFile,
      options.cleanupDir ?? '',
      '--',
      options.command,
      ...options.args,
    ],
    {
      // A process group of its own: Ctrl-C in a terminal reaches the test runner, whose exit then
      // closes the watchdog's stdin, instead of racing the watchdog's own clean-up.
      detached: true,
      stdio: ['pipe', 'pipe', 'ignore'],
      // The server's own directory: a server run as another user may not enter ours.
      cwd: dirname(options.logFile),
      ...(options.user === undefined ? {} : { uid: options.user.uid, gid: options.user.gid }),
    },
  );
  let running = true;
  const exited = once(watchdog, 'exit').then(([code, signal]) => {
    running = false;
    if (typeof code === 'number') return code;
    return 128 + constants.signals[signal as NodeJS.Signals];
  });

  const lines = createInterface({ input: watchdog.stdout });
  const [firstLine] = (await Promise.race([
    once(lines, 'line'),
    exited.then((status) => {
      throw new Error(`${options.command} could not be started (watchdog status ${status})`);
    }),
  ])) as [string];
  lines.close();
  const pid = Number.parseInt(firstLine, 10);
  if (!Number.isInteger(pid)) throw new Error(`watchdog printed ${firstLine}, not a pid`);

  // A test that forgets to stop its server must not keep the runner alive: the watchdog ends the
  // server when this process exits.
  watchdog.unref();
  for (const stream of [watchdog.stdin, watchdog.stdout]) {
    (stream as unknown as { unref?: () => void }).unref?.();
  }

  const exitedEarly = exited.then(async (status) => {
    const log = await readFile(options.logFile, 'utf8').catch(() => '');
    throw new Error(`${options.command} exited with status ${status} while starting:\n${log}`);
  });
  exitedEarly.catch(() => undefined);
  try {
    await Promise.race([options.waitReady(), exitedEarly]);
  } catch (error) {
    watchdog.stdin.end(); // a server that never became ready is taken down and cleaned up
    throw error;
  }

  return {
    pid,
    waitForExit() {
      // Unreferenced (above), the watchdog would let this process exit in the middle of the wait.
      if (running) watchdog.ref();
      return exited;
    },
    isRunning: () => running,
    signal(signal) {
      try {
        process.kill(pid, signal);
      } catch (error) {
        // Already gone: the exit is reported through `exited`.
        if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
      }
    },
    release() {
      watchdog.stdin.end();
    },
  };
}
