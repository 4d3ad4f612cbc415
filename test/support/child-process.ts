import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';

export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Starts a TypeScript file in a child Node process (through tsx); `done` when it ends. */
export function startTypeScript(
  file: URL,
  args: readonly string[],
  env: NodeJS.ProcessEnv = {},
): { child: ChildProcess; done: Promise<ChildResult> } {
  const child = spawn(process.execPath, ['--import', 'tsx', file.pathname, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const done = (async () => {
    const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
    return { code, signal, stdout, stderr };
  })();
  return { child, done };
}

/** Runs a TypeScript file in a child Node process (through tsx) and waits for it to end. */
export function runTypeScript(
  file: URL,
  args: readonly string[],
  env: NodeJS.ProcessEnv = {},
): Promise<ChildResult> {
  return startTypeScript(file, args, env).done;
}
