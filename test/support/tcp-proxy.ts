import { createServer, connect, type Socket } from 'node:net';
import { once } from 'node:events';

/**
 * A TCP proxy on a free loopback port that can lose a reply: armed, it forwards the next request
 * to the server as usual, and when the server's answer comes back it resets the client's
 * connection instead of delivering it. The server has applied the command; the client never
 * learns so. (FAILURES.md #6 for Redis, #13 for PostgreSQL's COMMIT.)
 */
export interface TcpProxy {
  readonly port: number;
  /** Loses the next reply the server sends, whatever request it answers. */
  loseNextReply(): void;
  /**
   * Loses the reply to the next request whose bytes contain `marker` (for example the
   * simple-query message of a PostgreSQL `COMMIT`).
   */
  loseReplyTo(marker: string): void;
  /** Replies lost so far. */
  readonly repliesLost: number;
  close(): Promise<void>;
}

export async function startTcpProxy(targetHost: string, targetPort: number): Promise<TcpProxy> {
  let armed = false;
  let armOnRequest: string | undefined;
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
    client.on('data', (chunk: Buffer) => {
      if (armOnRequest !== undefined && chunk.toString('latin1').includes(armOnRequest)) {
        armOnRequest = undefined;
        armed = true;
      }
      upstream.write(chunk);
    });
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
    loseReplyTo: (marker) => {
      armOnRequest = marker;
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
