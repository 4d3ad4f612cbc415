/**
 * There is no Docker engine on the machines this project is developed on, so the compose file
 * is checked by reading it: its services, commands and environment must match what the `tally`
 * command actually offers.
 */
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { runTypeScript } from './support/child-process.js';

const cli = new URL('../src/cli/main.ts', import.meta.url);
const root = new URL('..', import.meta.url);

interface Service {
  image?: string;
  build?: string;
  command?: string | string[];
  environment?: Record<string, string>;
  healthcheck?: { test: string[] };
  depends_on?: Record<string, { condition: string }>;
  deploy?: { replicas?: number };
  volumes?: string[];
  profiles?: string[];
}

async function compose(): Promise<{
  services: Record<string, Service>;
  volumes: Record<string, unknown>;
}> {
  return parse(await readFile(new URL('docker-compose.yml', root), 'utf8'), { merge: true }) as {
    services: Record<string, Service>;
    volumes: Record<string, unknown>;
  };
}

/** The environment variables `tally <command> --help` documents. */
async function documentedVariables(command: string): Promise<Set<string>> {
  const help = await runTypeScript(cli, [command, '--help']);
  return new Set(help.stdout.match(/\b[A-Z][A-Z0-9_]{2,}\b/g) ?? []);
}

describe('docker-compose.yml', () => {
  it('has redis (AOF always, noeviction), postgres, a one-shot migrate, the api and 2 workers', async () => {
    const { services: all, volumes } = await compose();
    const services = Object.fromEntries(
      Object.entries(all).filter(([, service]) => service.profiles === undefined),
    );
    expect(Object.keys(services).sort()).toEqual(['api', 'migrate', 'postgres', 'redis', 'worker']);
    expect(services.api?.environment?.REDIS_URL).toBe(
      '${TALLY_COMPOSE_REDIS_URL:-redis://redis:6379}',
    );
    const redisCommand = String(services.redis?.command);
    expect(redisCommand).toContain('--appendonly yes');
    // What serve and worker accept without TALLY_ACCEPT_REDIS_LOSS.
    expect(redisCommand).toContain('--appendfsync always');
    expect(services.worker?.environment?.TALLY_METRICS_HOST).toBe('0.0.0.0');
    // The API listens beyond loopback: compose refuses to start it without a token.
    expect(services.api?.environment?.TALLY_API_TOKEN).toMatch(/^\$\{TALLY_API_TOKEN:\?/);
    expect(redisCommand).toContain('--maxmemory-policy noeviction');
    expect(services.worker?.deploy?.replicas).toBe(2);
    expect(services.api?.depends_on?.migrate?.condition).toBe('service_completed_successfully');
    for (const name of ['redis', 'postgres', 'api', 'worker']) {
      expect(services[name]?.healthcheck?.test.length, name).toBeGreaterThan(0);
    }
    expect(
      Object.keys(volumes)
        .filter((name) => !name.startsWith('redis-node-'))
        .sort(),
    ).toEqual(['postgres-data', 'redis-data']);
    expect(services.redis?.volumes).toEqual(['redis-data:/data']);
  });

  it('has a cluster profile: 6 nodes (AOF always, noeviction) made into 3 primaries + 3 replicas once', async () => {
    const { services, volumes } = await compose();
    const profiled = Object.entries(services).filter(([, service]) =>
      service.profiles?.includes('cluster'),
    );
    const nodes = profiled.filter(([name]) => name.startsWith('redis-node-'));
    expect(nodes.map(([name]) => name)).toEqual([1, 2, 3, 4, 5, 6].map((i) => `redis-node-${i}`));
    for (const [name, node] of nodes) {
      const command = String(node.command);
      for (const setting of ['--cluster-enabled yes', '--appendfsync always', 'noeviction']) {
        expect(command, name).toContain(setting);
      }
      const port = /--port (\d+)/.exec(command)?.[1];
      expect(node.healthcheck?.test, name).toEqual(['CMD', 'redis-cli', '-p', port, 'ping']);
      expect(node.volumes, name).toEqual([`${name}:/data`]);
      expect(volumes, name).toHaveProperty(name);
    }
    const init = String((services['redis-cluster-init']?.command as string[])[0]);
    expect(init).toContain('--cluster-replicas 1');
    for (const [name, node] of nodes) {
      expect(init).toContain(`${name}:${/--port (\d+)/.exec(String(node.command))?.[1]}`);
    }
  });

  it('runs commands the CLI has, with the variables each one documents', async () => {
    const { services } = await compose();
    const dockerfile = await readFile(new URL('Dockerfile', root), 'utf8');
    expect(dockerfile).toMatch(/ENTRYPOINT \["node", "bin\/tally\.js"\]/);
    const topHelp = (await runTypeScript(cli, ['--help'])).stdout;
    for (const name of ['migrate', 'api', 'worker']) {
      const service = services[name];
      expect(service?.build, name).toBe('.');
      const [command] = service?.command as string[];
      expect(topHelp, `${name} runs tally ${command}`).toMatch(new RegExp(`^  ${command} `, 'm'));
      const documented = await documentedVariables(command ?? '');
      for (const variable of Object.keys(service?.environment ?? {})) {
        expect(
          documented.has(variable),
          `${name}: tally ${command} --help documents ${variable}`,
        ).toBe(true);
      }
    }
  });
});
