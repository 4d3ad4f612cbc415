// Measures how many acknowledged writes a Redis AOF policy loses to kill -9 of redis-server.
// Not a speed benchmark: an experiment whose figures are recorded in docs/design.md.
//
//   npx tsx bench/aof-kill-experiment.ts aof-everysec   # or aof-always
//
// Each round pipelines 2,000 INCRs, waits for every reply, kills Redis with SIGKILL, restarts it
// on the same AOF and compares. Run it with the disk busy (for example several
// `dd if=/dev/zero of=/tmp/x bs=1M count=400 conv=fsync` in a loop) to see everysec's window.
import { Redis } from 'ioredis';
import { startRedis, type RedisPersistence } from '../test/support/redis-server.js';

const persistence = (process.argv[2] ?? 'aof-everysec') as RedisPersistence;
const rounds = 30;
const writesPerRound = 2_000;

const server = await startRedis({ persistence });
let lost = 0;
for (let round = 0; round < rounds; round++) {
  const writer = new Redis(server.url, { maxRetriesPerRequest: 0, retryStrategy: () => null });
  writer.on('error', () => undefined);
  await Promise.all(Array.from({ length: writesPerRound }, () => writer.incr('n')));
  const acknowledged = Number(await writer.get('n'));
  await server.kill('SIGKILL');
  writer.disconnect();
  await server.restart();
  const reader = new Redis(server.url);
  const recovered = Number(await reader.get('n'));
  reader.disconnect();
  if (recovered !== acknowledged) {
    console.log(`round ${round}: acknowledged ${acknowledged}, recovered ${recovered}`);
  }
  lost += acknowledged - recovered;
}
console.log(
  `${persistence}: ${lost} of ${rounds * writesPerRound} acknowledged increments lost to kill -9`,
);
await server.stop();
