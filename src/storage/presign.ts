/**
 * Presigned download URLs. The URL carries its own credentials (the signature), so it is a secret
 * until it expires: log it only through `redactUrl` (observability/logger.ts).
 */
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { basename } from 'node:path';
import { StowageError } from '../errors.js';
import { MAX_PRESIGN_SECONDS, type Storage } from './client.js';

/** Default lifetime of a download link: 24 hours. */
export const DEFAULT_PRESIGN_SECONDS = 24 * 3600;

export interface PresignOptions {
  key: string;
  /** Name the browser saves the file as. Default: the key's last segment. */
  filename?: string;
  /** Lifetime in seconds, 1 to 7 days (SigV4's limit, enforced by R2). Default 24 h. */
  expiresInSeconds?: number;
}

export interface PresignedUrl {
  url: string;
  expiresAt: Date;
  filename: string;
}

/**
 * `attachment` with the file name twice (RFC 6266): an ASCII fallback for old clients, and
 * `filename*` in UTF-8 for the rest.
 */
export function attachmentDisposition(filename: string): string {
  const fallback = filename.replace(/[^\x20-\x7e]/g, '_').replace(/["\\]/g, '_');
  const encoded = encodeURIComponent(filename).replace(/['()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  return `attachment; filename="${fallback}"; filename*=UTF-8''${encoded}`;
}

/** A GET URL for `key` that downloads as an attachment. Refuses a lifetime over 7 days. */
export async function presignDownload(storage: Storage, options: PresignOptions): Promise<PresignedUrl> {
  const expiresIn = options.expiresInSeconds ?? DEFAULT_PRESIGN_SECONDS;
  if (!Number.isInteger(expiresIn) || expiresIn < 1 || expiresIn > MAX_PRESIGN_SECONDS) {
    // Refused rather than clamped: a caller asking for 30 days should learn it gets at most 7.
    throw new StowageError(
      'STOWAGE_ERR_USAGE',
      `presigned URL lifetime must be a whole number of seconds from 1 to ${MAX_PRESIGN_SECONDS} (7 days), got ${expiresIn}`,
    );
  }
  const filename = options.filename ?? basename(options.key);
  const command = new GetObjectCommand({
    Bucket: storage.bucket,
    Key: options.key,
    ResponseContentDisposition: attachmentDisposition(filename),
  });
  const signedAt = Date.now();
  const url = await getSignedUrl(storage.client, command, { expiresIn });
  return { url, expiresAt: new Date(signedAt + expiresIn * 1000), filename };
}
