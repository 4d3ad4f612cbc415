import { connect } from 'node:net';

/**
 * True when a Redis server answers PING on host:port with PONG (a server still loading its
 * AOF answers -LOADING, which is not ready yet). Raw RESP keeps the probe independent of any
 * client library's reconnect logic.
 */
export function redisAnswers(host: string, port: number, timeoutMs = 1_000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    let reply = '';
    const finish = (ready: boolean) => {
      socket.destroy();
      resolve(ready);
    };
    socket.setTimeout(timeoutMs, () => {
      finish(false);
    });
    socket.on('error', () => {
      finish(false);
    });
    socket.on('connect', () => {
      socket.write('PING\r\n');
    });
    socket.on('data', (chunk) => {
      reply += chunk.toString('latin1');
      if (reply.includes('\r\n')) finish(reply.startsWith('+PONG'));
    });
  });
}
