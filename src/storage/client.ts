/**
 * The one place that knows about R2's quirks. Every S3 call in Stowage goes through a client made
 * here:
 * - region `auto` and the endpoint derived from the account id (config.ts);
 * - path-style addressing for non-R2 endpoints (MinIO, s3rver), virtual-hosted for R2;
 * - checksum calculation/validation `WHEN_REQUIRED`: R2 and s3rver reject or mis-handle the SDK's
 *   default CRC32 trailers on streaming uploads; where the store is probed to verify per-part
 *   SHA-256 checksums, uploads ask for those explicitly (capabilities.ts, upload.ts);
 * - a fixed multipart part size: R2 requires every part but the last to be the same size;
 * - bounded SDK retries and socket timeouts;
 * - presigned URLs never longer than 7 days (SigV4's limit, which R2 enforces).
 */
import { S3Client } from '@aws-sdk/client-s3';
import type { Config } from '../config.js';
import { StowageError } from '../errors.js';

export const MAX_PRESIGN_SECONDS = 7 * 24 * 3600;

export interface Storage {
  client: S3Client;
  bucket: string;
  /** Multipart part size in bytes, the same for every part. */
  partSize: number;
  /** Parts uploaded concurrently per upload. */
  queueSize: number;
  endpoint: string;
  close(): void;
}

export function createStorage(config: Pick<Config, 'storage'>): Storage {
  const s = config.storage;
  const missing = [
    !s.endpoint && 'STOWAGE_S3_ENDPOINT or STOWAGE_S3_ACCOUNT_ID',
    !s.bucket && 'STOWAGE_S3_BUCKET',
    !s.accessKeyId && 'STOWAGE_S3_ACCESS_KEY_ID',
    !s.secretAccessKey && 'STOWAGE_S3_SECRET_ACCESS_KEY',
  ].filter(Boolean);
  if (missing.length) {
    throw new StowageError('STOWAGE_ERR_CONFIG', `object storage is not configured: set ${missing.join(', ')} (the R2_* names work too)`);
  }
  const client = new S3Client({
    region: s.region,
    ...(s.endpoint ? { endpoint: s.endpoint } : {}),
    forcePathStyle: s.forcePathStyle ?? true,
    credentials: { accessKeyId: s.accessKeyId!, secretAccessKey: s.secretAccessKey! },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: s.maxAttempts,
    // Options object form: the SDK builds its NodeHttpHandler from it.
    requestHandler: { connectionTimeout: 10_000, requestTimeout: s.requestTimeoutMs },
  });
  return {
    client,
    bucket: s.bucket!,
    partSize: s.partSizeMb * 1024 * 1024,
    queueSize: s.queueSize,
    endpoint: s.endpoint!,
    close: () => client.destroy(),
  };
}
