/**
 * TEST-ONLY: an HTTP proxy in front of an s3rver (test/helpers/s3.ts) that can
 *
 * 1. inject faults: reset the connection of UploadPart requests for a range of part numbers, after
 *    a given number of body bytes (what a flaky network or a store dying mid-upload looks like to
 *    the client; the SDK retries each part and then gives up), and
 * 2. add AbortMultipartUpload, which s3rver 3.7 lacks (it answers 405 MethodNotAllowed to
 *    `DELETE /{bucket}/{key}?uploadId=…`). The extension follows the S3 API reference for
 *    AbortMultipartUpload: `204 No Content` when the upload existed, otherwise `404` with error
 *    code `NoSuchUpload`; the upload's parts are freed (s3rver keeps an open multipart upload as the
 *    folder `<bucket>/._S3rver_uploads/<uploadId>`, holding its key and parts, which is removed).
 *    Like s3rver itself it does not verify SigV4 signatures; it only requires a signed request.
 *
 * Tests that rely on (2) say so. Everything else is forwarded to s3rver byte for byte.
 */
import { randomBytes } from 'node:crypto';
import { readFile, rm, stat } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { TestS3 } from './s3.js';

export interface S3ProxyOptions {
  /** Serve AbortMultipartUpload (see above). Default false: s3rver's own answer goes through. */
  abortMultipartUpload?: boolean;
}

export interface S3Proxy {
  endpoint: string;
  /** Reset UploadPart connections for parts fromPart..toPart after `afterBytes` of their body. */
  failParts(fault: { fromPart: number; toPart?: number; afterBytes: number }): void;
  /** Stop injecting faults. */
  heal(): void;
  /** What went through: request counts by operation, and connections reset. */
  stats: { abortRequests: number; partRequests: number; resets: number };
  close(): Promise<void>;
}

/** The folder in which s3rver keeps the open multipart uploads of `bucket`. */
export function s3rverUploadsDir(s3: TestS3, bucket = s3.bucket): string {
  return join(s3.directory, bucket, '._S3rver_uploads');
}

function s3Error(res: ServerResponse, status: number, code: string, message: string, extra = ''): void {
  const body =
    `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message>${extra}` +
    `<RequestId>${randomBytes(8).toString('hex')}</RequestId></Error>`;
  res.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

export async function startS3Proxy(s3: TestS3, options: S3ProxyOptions = {}): Promise<S3Proxy> {
  const target = new URL(s3.endpoint);
  let fault: { fromPart: number; toPart?: number; afterBytes: number } | null = null;
  const stats = { abortRequests: 0, partRequests: 0, resets: 0 };

  async function abortMultipartUpload(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    stats.abortRequests++;
    const signed = Boolean(req.headers.authorization) || url.searchParams.has('X-Amz-Signature');
    if (!signed) return s3Error(res, 403, 'AccessDenied', 'Access Denied');
    const [bucket, ...keyParts] = url.pathname.slice(1).split('/').map(decodeURIComponent);
    const key = keyParts.join('/');
    const uploadId = url.searchParams.get('uploadId') ?? '';
    const dir = join(s3rverUploadsDir(s3, bucket), uploadId);
    const noSuchUpload = () =>
      s3Error(
        res,
        404,
        'NoSuchUpload',
        'The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.',
        `<UploadId>${uploadId}</UploadId>`,
      );
    // An upload id is a folder name here: refuse anything that could step out of the folder.
    if (!/^[A-Za-z0-9_-]+$/.test(uploadId)) return noSuchUpload();
    try {
      await stat(dir);
      if ((await readFile(join(dir, 'key'), 'utf8')) !== key) return noSuchUpload();
    } catch {
      return noSuchUpload();
    }
    await rm(dir, { recursive: true, force: true });
    res.writeHead(204);
    res.end();
  }

  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://proxy');
    if (options.abortMultipartUpload && req.method === 'DELETE' && url.searchParams.has('uploadId')) {
      abortMultipartUpload(req, res, url).catch((err: Error) => s3Error(res, 500, 'InternalError', err.message));
      return;
    }
    const upstream = httpRequest(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (upstreamRes) => {
        res.writeHead(upstreamRes.statusCode ?? 502, upstreamRes.headers);
        upstreamRes.pipe(res);
      },
    );
    upstream.on('error', () => req.socket.destroy());
    const partNumber = req.method === 'PUT' && url.searchParams.has('uploadId') ? Number(url.searchParams.get('partNumber')) : 0;
    if (partNumber) stats.partRequests++;
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
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    failParts(f) {
      fault = f;
    },
    heal() {
      fault = null;
    },
    stats,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
