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
  /** Resets every open connection at once, replies in flight included. */
  resetAll(): void;
  /** New connections go to this port from now on (a failover behind one address). */
  retarget(port: number): void;
  /** Holds all traffic for `ms` (both ways), then lets it through. */
  stall(ms: number): void;
  /** Holds the server's replies (requests still pass) until the returned function is called. */
  holdReplies(): () => void;
  /** Resolves once a request whose bytes contain `marker` has been forwarded to the server. */
  forwarded(marker: string): Promise<void>;
  /** Replies lost so far. */
  readonly repliesLost: number;
  close(): Promise<void>;
}

export async function startTcpProxy(targetHost: string, initialPort: number): Promise<TcpProxy> {
  let targetPort = initialPort;
  let armed = false;
  let armOnRequest: string | undefined;
  let stalledUntil = 0;
  let repliesHeld = false;
  const stalled = () => stalledUntil > Date.now();
  const requestWatchers = new Set<{ marker: string; seen: () => void }>();
  /** Forwards chunks in order; while `holding()`, keeps them until it ends. */
  const forwarder = (target: Socket, holding: () => boolean) => {
    const held: Buffer[] = [];
    const release = () => {
      if (holding()) {
        setTimeout(release, 5);
        return;
      }
      for (const chunk of held.splice(0)) target.write(chunk);
    };
    return (chunk: Buffer) => {
      if (held.length > 0 || holding()) {
        if (held.push(chunk) === 1) release();
        return;
      }
      target.write(chunk);
    };
  };
  let repliesLost = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect({ host: targetHost, port: targetPort });
    sockets.add(client).add(upstream);
    const toServer = forwarder(upstream, stalled);
    const toClient = forwarder(client, () => repliesHeld || stalled());
    const forget = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', forget).on('close', forget);
    upstream.on('error', forget).on('close', forget);
    // Armed by a request of this connection: its reply is the one lost (not one of another
    // connection's, such as a replica's replication stream through the same proxy).
    let armedHere = false;
    client.on('data', (chunk: Buffer) => {
      if (armOnRequest !== undefined && chunk.toString('latin1').includes(armOnRequest)) {
        armOnRequest = undefined;
        armedHere = true;
      }
      toServer(chunk);
      const request = chunk.toString('latin1');
      for (const watcher of requestWatchers) {
        if (request.includes(watcher.marker)) {
          requestWatchers.delete(watcher);
          watcher.seen();
        }
      }
    });
    upstream.on('data', (chunk) => {
      if (armed || armedHere) {
        if (armedHere) armedHere = false;
        else armed = false;
        repliesLost++;
        client.resetAndDestroy();
        upstream.destroy();
        return;
      }
      toClient(chunk);
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
    resetAll: () => {
      for (const socket of sockets) socket.resetAndDestroy();
    },
    retarget: (port) => {
      targetPort = port;
    },
    stall: (ms) => {
      stalledUntil = Date.now() + ms;
    },
    holdReplies: () => {
      repliesHeld = true;
      return () => {
        repliesHeld = false;
      };
    },
    forwarded: (marker) =>
      new Promise((seen) => {
        requestWatchers.add({ marker, seen });
      }),
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
