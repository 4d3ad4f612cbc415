import { connect } from 'node:net';

/**
 * Sends `request` byte for byte to 127.0.0.1:`port` (no client normalises its target or
 * headers) and resolves with everything the server wrote before it closed the connection.
 */
export function rawRequest(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let text = '';
    socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
    socket.on('error', reject);
    socket.on('close', () => {
      resolve(text);
    });
    socket.write(request);
  });
}
