import { createServer, connect, type Socket } from 'node:net';
import { once } from 'node:events';

/**
 * A TCP proxy on a free loopback port that can lose a reply: armed with `loseNextReply()`, it
 * forwards the next request to the server as usual, and when the server's answer comes back it
 * resets the client's connection instead of delivering it. The server has applied the command;
 * the client never learns so. (FAILURES.md #6.)
 */
export interface TcpProxy {
  readonly port: number;
  loseNextReply(): void;
  /** Replies lost so far. */
  readonly repliesLost: number;
  close(): Promise<void>;
}

export async function startTcpProxy(targetHost: string, targetPort: number): Promise<TcpProxy> {
  let armed = false;
  let repliesLost = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect({ host: targetHost, port: targetPort });
    sockets.add(client).add(upstream);
    const forget = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', forget).on('close', forget);
    upstream.on('error', forget).on('close', forget);
    client.on('data', (chunk) => upstream.write(chunk));
    upstream.on('data', (chunk) => {
      if (armed) {
        armed = false;
        repliesLost++;
        client.resetAndDestroy();
        upstream.destroy();
        return;
      }
      client.write(chunk);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('proxy has no port');
  return {
    port: address.port,
    loseNextReply: () => {
      armed = true;
    },
    get repliesLost() {
      return repliesLost;
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}
