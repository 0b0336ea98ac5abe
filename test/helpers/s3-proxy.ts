/**
 * TEST-ONLY: a fault-injecting HTTP proxy in front of a real S3 server (radosgw or s3rver, see
 * test/helpers/s3.ts). It emulates nothing: every request and every answer is forwarded byte for
 * byte (headers included, so SigV4 signatures made for the proxy's address stay valid upstream).
 *
 * The one fault: reset the connection of UploadPart requests for a range of part numbers, after a
 * given number of body bytes (what a flaky network or a store dying mid-upload looks like to the
 * client; the SDK retries each part and then gives up). And one delay: hold every request until a
 * promise settles (a store that is slow to answer). It also counts what went through.
 */
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { TestS3 } from './s3.js';

export interface S3Proxy {
  endpoint: string;
  /** Reset UploadPart connections for parts fromPart..toPart after `afterBytes` of their body. */
  failParts(fault: { fromPart: number; toPart?: number; afterBytes: number }): void;
  /** Forward no request before `until` settles (null: stop holding). */
  holdRequests(until: Promise<unknown> | null): void;
  /** Stop injecting faults. */
  heal(): void;
  /**
   * What went through: AbortMultipartUpload and UploadPart requests (forwarded to the server
   * whatever it answers, Stowage's capability probe included), and connections reset.
   */
  stats: { abortRequests: number; partRequests: number; resets: number };
  /** UploadPart requests by object key (path-style: the path after the bucket). */
  partRequestsFor(key: string): number;
  close(): Promise<void>;
}

export async function startS3Proxy(s3: TestS3): Promise<S3Proxy> {
  const target = new URL(s3.endpoint);
  let fault: { fromPart: number; toPart?: number; afterBytes: number } | null = null;
  const stats = { abortRequests: 0, partRequests: 0, resets: 0 };
  const partsByKey = new Map<string, number>();
  let hold: Promise<unknown> | null = null;

  const server = createServer((req, res) => {
    // A held request's body waits unread in its socket until it is forwarded.
    if (hold)
      hold.then(
        () => forward(req, res),
        () => forward(req, res),
      );
    else forward(req, res);
  });
  const forward = (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://proxy');
    const upstream = httpRequest(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (upstreamRes) => {
        res.writeHead(upstreamRes.statusCode ?? 502, upstreamRes.headers);
        upstreamRes.pipe(res);
      },
    );
    upstream.on('error', () => req.socket.destroy());
    if (req.method === 'DELETE' && url.searchParams.has('uploadId')) stats.abortRequests++;
    const partNumber = req.method === 'PUT' && url.searchParams.has('uploadId') ? Number(url.searchParams.get('partNumber')) : 0;
    if (partNumber) {
      stats.partRequests++;
      const objectKey = decodeURIComponent(url.pathname).split('/').slice(2).join('/');
      partsByKey.set(objectKey, (partsByKey.get(objectKey) ?? 0) + 1);
    }
    const f = fault;
    if (f && partNumber >= f.fromPart && partNumber <= (f.toPart ?? Infinity)) {
      let seen = 0;
      req.on('data', (chunk: Buffer) => {
        seen += chunk.length;
        if (seen > f.afterBytes && !req.socket.destroyed) {
          stats.resets++;
          req.socket.resetAndDestroy();
          upstream.destroy();
          return;
        }
        upstream.write(chunk);
      });
      req.on('end', () => upstream.end());
    } else {
      req.pipe(upstream);
    }
  };
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    failParts(f) {
      fault = f;
    },
    holdRequests(until) {
      hold = until;
    },
    heal() {
      fault = null;
      hold = null;
    },
    stats,
    partRequestsFor: (key) => partsByKey.get(key) ?? 0,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
