/**
 * One pass from a byte stream to an object: a Transform that counts and SHA-256-hashes the bytes
 * feeds @aws-sdk/lib-storage's multipart Upload (fixed part size, as R2 requires). Memory is
 * bounded by partSize × (queueSize + 1), whatever the object size. After the upload a HEAD
 * confirms the stored size, and the SHA-256 is written to a sidecar object.
 *
 * Why a sidecar (`<key>.sha256`) and not object metadata: S3 and R2 take user metadata only when
 * the object is created, i.e. at CreateMultipartUpload, before a single byte has been hashed.
 * Putting it there afterwards means a server-side CopyObject of the whole object onto itself
 * (slow for big artifacts, capped at 5 GiB per copy, and it replaces the ETag), and hashing first
 * means reading the source twice or staging it, which this pipeline never does. The sidecar holds
 * `<hex>  <file name>\n`, the `sha256sum` format, so any S3 client can check a download with
 * `sha256sum -c`. The object's metadata names its sidecar. See docs/storage.md.
 *
 * Failure handling around lib-storage, which on its own (3.x) would replace the original error
 * with the error of a refused AbortMultipartUpload, and on abort() reject at once while the
 * multipart abort runs unobserved in the background. Here every S3 call goes through a per-upload
 * view of the client that remembers the first failure and records a failed AbortMultipartUpload
 * instead of letting it mask the cause. An abort signal destroys the body instead of calling
 * abort(), so lib-storage takes its failure path: the multipart upload is aborted, and that is
 * awaited, before uploadStream rejects. (After a part fails for good, lib-storage stops reading:
 * the failing part's loop closes the shared part generator, which destroys the body.)
 */
import { createHash } from 'node:crypto';
import { basename } from 'node:path';
import { Transform, pipeline, type Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CreateMultipartUploadCommand,
  HeadObjectCommand,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { StowageError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { Storage } from './client.js';
import { storeCapabilities } from './capabilities.js';
import { sha256SidecarKey } from './keys.js';
import { describeStoreError, isNotImplemented, storeError } from './store-errors.js';

export interface UploadStreamOptions {
  key: string;
  body: Readable;
  contentType?: string;
  /** Stored on the object, e.g. `attachment; filename="x.zip"`. */
  contentDisposition?: string;
  /** User metadata (x-amz-meta-*); set at creation. */
  metadata?: Record<string, string>;
  signal?: AbortSignal;
  /** Bytes acknowledged by the store so far (per finished part for multipart uploads). */
  onProgress?: (uploadedBytes: number) => void;
  /** Write the `<key>.sha256` sidecar after the object. Default true. */
  sidecar?: boolean;
  logger?: Logger;
  metrics?: Pick<Metrics, 'uploadBytes' | 'uploadDuration' | 'uploadAttempts'>;
}

export interface UploadResult {
  key: string;
  /** Bytes stored, confirmed by HEAD. */
  size: number;
  /** SHA-256 of the stored bytes, hex. */
  sha256: string;
  etag: string | null;
  /** The sidecar's key, or null when it was not written. */
  sidecarKey: string | null;
}

/** instanceof, or the class name when a bundler loaded a second copy of the SDK (dual package). */
function isCommand(command: unknown, type: abstract new (...args: never[]) => unknown): boolean {
  return command instanceof type || (command as object | null)?.constructor?.name === type.name;
}

export async function uploadStream(storage: Storage, options: UploadStreamOptions): Promise<UploadResult> {
  const { key, signal, logger, metrics } = options;
  const started = process.hrtime.bigint();
  const record = (status: 'ok' | 'error' | 'aborted', bytes: number) => {
    metrics?.uploadAttempts.inc({ status });
    metrics?.uploadDuration.observe({ status }, Number(process.hrtime.bigint() - started) / 1e9);
    if (bytes > 0) metrics?.uploadBytes.inc({ status }, bytes);
  };
  signal?.throwIfAborted();

  const hash = createHash('sha256');
  let size = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      size += chunk.length;
      callback(null, chunk);
    },
  });
  // pipeline: a body error destroys the tap (lib-storage then fails), and destroying the tap
  // destroys the body (the zip writer closes its files).
  pipeline(options.body, tap, () => {});

  let firstFailure: unknown;
  let uploadId: string | undefined;
  let abortFailure: unknown;
  const onAbort = () => {
    const reason: unknown = signal?.reason ?? Object.assign(new Error('upload aborted'), { name: 'AbortError' });
    firstFailure ??= reason;
    tap.destroy(reason instanceof Error ? reason : new Error(String(reason)));
  };
  signal?.addEventListener('abort', onAbort, { once: true });

  // A per-upload view of the shared client (config, middleware and sockets are the shared ones'):
  // only `send` differs, to observe failures as they happen. See the file comment.
  const client = Object.create(storage.client) as S3Client;
  const send = (async (command: Parameters<S3Client['send']>[0], ...rest: unknown[]) => {
    try {
      const output = await (storage.client.send as (...args: unknown[]) => Promise<unknown>)(command, ...rest);
      if (isCommand(command, CreateMultipartUploadCommand)) uploadId = (output as { UploadId?: string }).UploadId;
      return output;
    } catch (err) {
      if (isCommand(command, AbortMultipartUploadCommand)) {
        // Swallowed so lib-storage reports the failure that caused the abort; reported below.
        abortFailure = err;
        return {};
      }
      firstFailure ??= err;
      throw err;
    }
  }) as S3Client['send'];
  client.send = send;

  // Where the store verifies per-part SHA-256 checksums (R2, S3), the SDK sends one with every
  // part, so a part corrupted in transit is refused at once instead of found by the size check.
  const { partChecksumSha256 } = await storeCapabilities(storage).catch((err: unknown) => {
    tap.destroy();
    throw storeError(err, `upload of ${key}`);
  });
  const upload = new Upload({
    client,
    params: {
      Bucket: storage.bucket,
      Key: key,
      Body: tap,
      ...(partChecksumSha256 ? { ChecksumAlgorithm: 'SHA256' as const } : {}),
      ContentType: options.contentType ?? 'application/octet-stream',
      ...(options.contentDisposition ? { ContentDisposition: options.contentDisposition } : {}),
      Metadata: {
        ...options.metadata,
        ...(options.sidecar !== false ? { 'sha256-sidecar': basename(sha256SidecarKey(key)) } : {}),
      },
    },
    partSize: storage.partSize,
    queueSize: storage.queueSize,
    leavePartsOnError: false,
  });
  if (options.onProgress) {
    const onProgress = options.onProgress;
    upload.on('httpUploadProgress', (p) => {
      if (typeof p.loaded === 'number') onProgress(p.loaded);
    });
  }

  let etag: string | null = null;
  try {
    const out = await upload.done();
    etag = out.ETag ?? null;
  } catch (err) {
    const cause = firstFailure ?? err;
    const aborted = signal?.aborted === true;
    record(aborted ? 'aborted' : 'error', size);
    let what = `upload of ${key} failed`;
    if (abortFailure !== undefined) {
      const detail = isNotImplemented(abortFailure)
        ? 'the store does not implement AbortMultipartUpload'
        : `AbortMultipartUpload failed: ${describeStoreError(abortFailure)}`;
      what += ` and its multipart upload ${uploadId ?? '(unknown id)'} is left incomplete (${detail}); a bucket lifecycle rule (AbortIncompleteMultipartUpload) or \`stowage cleanup --multipart\` removes it`;
      logger?.error(
        { key, uploadId, err: describeStoreError(abortFailure) },
        'multipart upload could not be aborted; it is left incomplete',
      );
    }
    if (aborted) {
      // Not permanent: the worker is shutting down and another one will take the job.
      throw new StowageError('STOWAGE_ERR_STORE', `${what}: aborted (${describeStoreError(cause)})`, { cause });
    }
    throw storeError(cause, what);
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
  const sha256 = hash.digest('hex');

  try {
    const head = await storage.client.send(new HeadObjectCommand({ Bucket: storage.bucket, Key: key }));
    if (head.ContentLength !== size) {
      throw new StowageError('STOWAGE_ERR_STORE', `upload of ${key}: the store reports ${head.ContentLength} bytes, ${size} were sent`);
    }
    // radosgw's CompleteMultipartUpload answer carries an empty <ETag>; HEAD has the real one.
    if (!etag || etag === '""') etag = head.ETag ?? null;
    let sidecarKey: string | null = null;
    if (options.sidecar !== false) {
      sidecarKey = sha256SidecarKey(key);
      await storage.client.send(
        new PutObjectCommand({
          Bucket: storage.bucket,
          Key: sidecarKey,
          Body: `${sha256}  ${basename(key)}\n`,
          ContentType: 'text/plain; charset=utf-8',
        }),
        signal ? { abortSignal: signal } : {},
      );
    }
    record('ok', size);
    logger?.debug({ key, size, sha256, uploadId }, 'uploaded');
    return { key, size, sha256, etag, sidecarKey };
  } catch (err) {
    record('error', 0);
    throw storeError(err, `upload of ${key}: verifying or recording the checksum failed`);
  }
}
