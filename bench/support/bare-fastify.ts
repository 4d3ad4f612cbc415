// BASELINE, not Tally: the same routes as `tally serve`'s increments on a bare Fastify server,
// counting in a Map. It bounds what any HTTP front of a counter can do on this machine.
//   node --import tsx bench/support/bare-fastify.ts   (prints {"port": N} when listening)
import Fastify from 'fastify';

const values = new Map<string, number>();
const add = (counter: string, by: number) => {
  const value = (values.get(counter) ?? 0) + by;
  values.set(counter, value);
  return value;
};

const app = Fastify();
app.post<{ Params: { counter: string }; Body: { by?: number } }>(
  '/v1/counters/:counter/increment',
  (request, reply) =>
    reply.send({
      counter: request.params.counter,
      value: add(request.params.counter, request.body.by ?? 1),
    }),
);
app.post<{ Body: { increments: { counter: string; by?: number }[] } }>(
  '/v1/increments',
  (request, reply) =>
    reply.send({
      results: request.body.increments.map((item) => ({
        counter: item.counter,
        status: 'applied',
        value: add(item.counter, item.by ?? 1),
      })),
    }),
);
await app.listen({ host: '127.0.0.1', port: 0 });
const address = app.server.address();
console.log(
  JSON.stringify({ port: typeof address === 'object' && address !== null ? address.port : 0 }),
);
const stop = () => void app.close().then(() => process.exit(0));
process.on('SIGTERM', stop);
process.stdin.on('close', stop).resume();
