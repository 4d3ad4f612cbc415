import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { waitFor } from './wait-for.js';

const cli = new URL('../../src/cli/main.ts', import.meta.url).pathname;

/** One JSON log line of a worker. */
export type LogLine = Record<string, unknown> & { msg?: string; level?: number };

/** A `tally worker` or `tally serve` process, its log lines, and ways to end it. */
export interface TallyProcess {
  readonly pid: number;
  readonly logs: LogLine[];
  /** Resolves with the exit code and signal once the process has ended. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Waits for a log line that matches. */
  waitForLog(what: string, match: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** The port /metrics listens on (a worker's start-up line). */
  metricsPort(): Promise<number>;
  /** The port the API listens on (the server's start-up line). */
  apiPort(): Promise<number>;
  kill(signal: NodeJS.Signals): void;
}

/** Starts `tally <command>` (through tsx, from the sources) with `env` on top of ours. */
export function startTallyProcess(
  command: 'worker' | 'serve',
  env: Record<string, string>,
): TallyProcess {
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', cli, command], {
    env: { ...process.env, TALLY_LOG_LEVEL: 'debug', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: LogLine[] = [];
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  if (child.stdout !== null) {
    createInterface({ input: child.stdout }).on('line', (line) => {
      try {
        logs.push(JSON.parse(line) as LogLine);
      } catch {
        logs.push({ msg: line });
      }
    });
  }
  const exited = once(child, 'exit').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
  }));
  const waitForLog = (what: string, match: (line: LogLine) => boolean, timeoutMs = 20_000) =>
    waitFor(
      `tally ${command} (pid ${child.pid}): ${what}`,
      () => {
        if (child.exitCode !== null || child.signalCode !== null) {
          throw new Error(`tally ${command} exited early: ${stderr}`);
        }
        return logs.find(match);
      },
      { timeoutMs },
    );
  return {
    pid: child.pid ?? -1,
    logs,
    exited,
    waitForLog,
    async metricsPort() {
      const line = await waitForLog('start-up', (l) => l.msg === 'flush worker started');
      return line.metricsPort as number;
    },
    async apiPort() {
      const line = await waitForLog('start-up', (l) => l.msg === 'tally api listening');
      return line.port as number;
    },
    kill(signal) {
      child.kill(signal);
    },
  };
}

/** Starts `tally worker`. */
export function startWorker(env: Record<string, string>): TallyProcess {
  return startTallyProcess('worker', env);
}
