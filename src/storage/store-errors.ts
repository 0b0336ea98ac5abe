/**
 * What an S3 error means to Stowage, in one place: its HTTP status, whether retrying can help
 * (storeError), and whether the store simply lacks the operation (isNotImplemented).
 */
import { PermanentError, StowageError } from '../errors.js';

/** Status codes of S3 errors (SDK v3 exceptions carry `$metadata.httpStatusCode`). */
export function statusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
}

/** `Name (HTTP 503): message`. */
export function describeStoreError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const status = statusOf(err);
  return `${err.name}${status ? ` (HTTP ${status})` : ''}: ${err.message}`;
}

/**
 * Classify a store error: refused credentials and a missing bucket cannot be fixed by retrying
 * (PermanentError, straight to the dead-letter queue); anything else (5xx, resets, timeouts,
 * throttling) is a transient StowageError and the job retries with backoff.
 */
export function storeError(err: unknown, what: string): StowageError {
  if (err instanceof StowageError) return err;
  const name = (err as Error | null)?.name ?? '';
  const status = statusOf(err);
  const permanent =
    status === 401 ||
    status === 403 ||
    ['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'NoSuchBucket', 'InvalidBucketName'].includes(name);
  const message = `${what}: ${describeStoreError(err)}`;
  return permanent ? new PermanentError(message, { cause: err }) : new StowageError('STOWAGE_ERR_STORE', message, { cause: err });
}

/**
 * True when the store does not implement an operation: 501 NotImplemented, or 405
 * MethodNotAllowed (what s3rver 3.7 answers to some multipart calls).
 */
export function isNotImplemented(err: unknown): boolean {
  const status = statusOf(err);
  const name = (err as Error | null)?.name;
  return status === 501 || status === 405 || name === 'NotImplemented' || name === 'MethodNotAllowed';
}

/** Map a NotImplemented answer to a one-line StowageError; anything else through storeError. */
export function notImplementedError(err: unknown, operation: string, hint: string): StowageError {
  if (isNotImplemented(err)) {
    return new StowageError(
      'STOWAGE_ERR_STORE',
      `the object store does not implement ${operation} (HTTP ${statusOf(err) ?? '501'} ${(err as Error).name}); ${hint}`,
      { cause: err },
    );
  }
  return storeError(err, operation);
}

export function isPreconditionFailed(err: unknown): boolean {
  const name = (err as Error | null)?.name;
  return statusOf(err) === 412 || name === 'PreconditionFailed' || name === 'ConditionalRequestConflict';
}

export function isNotFound(err: unknown): boolean {
  const name = (err as Error | null)?.name;
  return statusOf(err) === 404 || name === 'NoSuchKey' || name === 'NotFound';
}

/** The multipart upload does not exist (any more): completed, aborted, or expired by a lifecycle rule. */
export function isNoSuchUpload(err: unknown): boolean {
  const name = (err as Error | null)?.name;
  return name === 'NoSuchUpload' || (statusOf(err) === 404 && name !== 'NoSuchBucket');
}
