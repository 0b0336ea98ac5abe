/**
 * TEST-ONLY: a TCP proxy whose behaviour the chaos tests switch at run time, put between worker
 * processes and a dependency (the S3 server, Redis, Postgres).
 *
 * Modes (each applies to new connections; switching away from `pass`/`delay` also cuts the open ones,
 * as a network partition or a restarting server would):
 * - `pass`: bytes flow both ways untouched;
 * - `delay`: like pass, but every chunk in either direction waits `ms` first;
 * - `reset`: connections are accepted, then reset (RST) at once;
 * - `refuse`: the listener is closed, so connects get ECONNREFUSED (the port stays reserved: it is
 *   listened on again when the mode changes back);
 * - `answer-503`: every connection gets a minimal HTTP 503 with an S3 XML error body
 *   (`ServiceUnavailable`), whatever it sent; what an S3 front end says when the store is overloaded.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { Transform } from 'node:stream';

export type FaultMode = { mode: 'pass' } | { mode: 'delay'; ms: number } | { mode: 'reset' } | { mode: 'refuse' } | { mode: 'answer-503' };

export interface FaultProxy {
  port: number;
  /** `http://127.0.0.1:<port>` */
  url: string;
  set(mode: FaultMode): Promise<void>;
  readonly mode: FaultMode['mode'];
  stats: { connections: number; resets: number; answered503: number; cut: number };
  close(): Promise<void>;
}

const BODY_503 =
  '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>' +
  '<Message>Please reduce your request rate.</Message><RequestId>chaos-proxy</RequestId></Error>';
const RESPONSE_503 =
  'HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\n' +
  `content-length: ${Buffer.byteLength(BODY_503)}\r\nconnection: close\r\n\r\n${BODY_503}`;

export async function startFaultProxy(target: { host?: string; port: number }, listenPort = 0): Promise<FaultProxy> {
  const host = target.host ?? '127.0.0.1';
  let current: FaultMode = { mode: 'pass' };
  const stats = { connections: 0, resets: 0, answered503: 0, cut: 0 };
  const open = new Set<Socket>();

  const onConnection = (client: Socket) => {
    stats.connections++;
    const mode = current;
    client.on('error', () => {});
    if (mode.mode === 'reset') {
      stats.resets++;
      client.resetAndDestroy();
      return;
    }
    if (mode.mode === 'answer-503') {
      stats.answered503++;
      // Answer once the request has started arriving, as a front end would.
      client.once('data', () => client.end(RESPONSE_503));
      return;
    }
    const upstream = connect({ host, port: target.port, allowHalfOpen: true });
    // The server's clean end travels through the pipes (delayed response bytes included); only a
    // hard close cuts the client at once. A client that is gone takes its upstream with it.
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    upstream.on('close', (hadError) => hadError && client.destroy());
    open.add(client);
    open.add(upstream);
    client.on('close', () => open.delete(client));
    upstream.on('close', () => open.delete(upstream));
    if (mode.mode === 'delay') {
      // A Transform per direction keeps byte order and backpressure; each chunk waits `ms`.
      const delayed = () =>
        new Transform({
          transform(chunk: Buffer, _enc, done) {
            setTimeout(() => done(null, chunk), mode.ms);
          },
        });
      client.pipe(delayed()).pipe(upstream);
      upstream.pipe(delayed()).pipe(client);
    } else {
      client.pipe(upstream);
      upstream.pipe(client);
    }
  };

  let server: Server | null = null;
  const listen = (port: number) =>
    new Promise<number>((resolve, reject) => {
      // Half-open allowed: a client that ends its side still gets the answer (pipes carry the FIN).
      const s = createServer({ allowHalfOpen: true }, onConnection);
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => {
        server = s;
        resolve((s.address() as { port: number }).port);
      });
    });
  const unlisten = () =>
    new Promise<void>((resolve) => {
      const s = server;
      server = null;
      if (!s) return resolve();
      s.close(() => resolve());
    });
  const cutAll = () => {
    for (const s of open) {
      stats.cut++;
      s.resetAndDestroy();
    }
    open.clear();
  };

  const port = await listen(listenPort);
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    stats,
    get mode() {
      return current.mode;
    },
    async set(mode) {
      const was = current;
      current = mode;
      if (mode.mode !== 'pass' && mode.mode !== 'delay') cutAll();
      if (mode.mode === 'refuse' && was.mode !== 'refuse') await unlisten();
      if (mode.mode !== 'refuse' && !server) {
        // Someone may grab the port in between; retry briefly rather than fail the run.
        for (let i = 0; ; i++) {
          try {
            await listen(port);
            break;
          } catch (err) {
            if (i > 50) throw err;
            await new Promise((r) => setTimeout(r, 100));
          }
        }
      }
    },
    async close() {
      cutAll();
      await unlisten();
    },
  };
}
