/**
 * Inspecting the store: a connectivity probe (put, head, get, list, delete, each timed), paginated
 * listing, and an object's details (size, ETag, SHA-256 from its sidecar, metadata). The listing
 * and the "not implemented" test here are shared by cleanup, lifecycle and usage.
 */
import { randomUUID } from 'node:crypto';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
} from '@aws-sdk/client-s3';
import { NotFoundError, StowageError } from '../errors.js';
import type { Storage } from './client.js';
import { isSha256SidecarKey, sha256SidecarKey } from './keys.js';
import { storeError } from './upload.js';

/** One listed object. */
export interface ListedObject {
  key: string;
  size: number;
  lastModified: Date;
  etag: string | null;
}

export function statusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
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

/**
 * Every object under `prefix`, page by page (1000 keys per request), in key order. `onPage` gets
 * the running count, for progress on long listings.
 *
 * ListObjects (v1) with `Marker` = the last key seen, not ListObjectsV2: s3rver 3.7 builds V2
 * continuation tokens with DES, which OpenSSL 3 (Node 17+) refuses, so every truncated V2 page is a
 * 500 there. V1 marker paging is served the same by R2, S3, MinIO and s3rver.
 */
export async function* listObjects(
  storage: Storage,
  options: { prefix?: string; limit?: number; signal?: AbortSignal; onPage?: (listed: number) => void } = {},
): AsyncGenerator<ListedObject> {
  let marker: string | undefined;
  let listed = 0;
  const limit = options.limit ?? Infinity;
  do {
    options.signal?.throwIfAborted();
    let page;
    try {
      page = await storage.client.send(
        new ListObjectsCommand({
          Bucket: storage.bucket,
          ...(options.prefix ? { Prefix: options.prefix } : {}),
          ...(marker ? { Marker: marker } : {}),
          MaxKeys: Math.min(1000, limit - listed),
        }),
        options.signal ? { abortSignal: options.signal } : {},
      );
    } catch (err) {
      throw storeError(err, `listing ${options.prefix ? `"${options.prefix}"` : 'the bucket'}`);
    }
    const contents = page.Contents ?? [];
    for (const o of contents) {
      if (!o.Key) continue;
      listed++;
      yield { key: o.Key, size: o.Size ?? 0, lastModified: o.LastModified ?? new Date(0), etag: o.ETag ?? null };
      if (listed >= limit) return;
    }
    options.onPage?.(listed);
    marker = page.IsTruncated ? (page.NextMarker ?? contents.at(-1)?.Key) : undefined;
  } while (marker);
}

export interface ProbeStep {
  step: 'put' | 'head' | 'get' | 'list' | 'delete';
  ok: boolean;
  ms: number;
  error?: string;
}

/** Where the probe object goes; nothing else is ever written there. */
export const PROBE_PREFIX = '_stowage/verify/';

/**
 * Put, head, get, list and delete a small probe object, timing each step. Stops at the first
 * failing step (the probe is still deleted when it was written). `ok` is true when all passed.
 */
export async function probeStore(storage: Storage): Promise<{ ok: boolean; key: string; steps: ProbeStep[] }> {
  const key = `${PROBE_PREFIX}${new Date().toISOString().replace(/[:.]/g, '')}-${randomUUID()}`;
  const body = `stowage verify ${key}\n`;
  const steps: ProbeStep[] = [];
  const { client, bucket } = storage;
  const step = async (name: ProbeStep['step'], fn: () => Promise<void>): Promise<boolean> => {
    const started = performance.now();
    try {
      await fn();
      steps.push({ step: name, ok: true, ms: Math.round(performance.now() - started) });
      return true;
    } catch (err) {
      const error = err instanceof Error ? `${err.name}${statusOf(err) ? ` (HTTP ${statusOf(err)})` : ''}: ${err.message}` : String(err);
      steps.push({ step: name, ok: false, ms: Math.round(performance.now() - started), error });
      return false;
    }
  };
  let written = false;
  const passed =
    (await step('put', async () => {
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: 'text/plain' }));
      written = true;
    })) &&
    (await step('head', async () => {
      const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
      if (head.ContentLength !== Buffer.byteLength(body)) throw new Error(`size ${head.ContentLength}, expected ${Buffer.byteLength(body)}`);
    })) &&
    (await step('get', async () => {
      const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
      const got = await res.Body!.transformToString();
      if (got !== body) throw new Error('the body read back differs from the body written');
    })) &&
    (await step('list', async () => {
      const res = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: key, MaxKeys: 1 }));
      if (res.Contents?.[0]?.Key !== key) throw new Error('the probe object is missing from the listing');
    }));
  if (written) {
    await step('delete', async () => {
      await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
    });
  }
  return { ok: passed && steps.every((s) => s.ok), key, steps };
}

export interface ObjectDetails {
  key: string;
  size: number;
  etag: string | null;
  /** From the `.sha256` sidecar; null when the object has none. */
  sha256: string | null;
  lastModified: string | null;
  contentType: string | null;
  metadata: Record<string, string>;
}

/** HEAD an object and read its SHA-256 sidecar. NotFoundError when the object does not exist. */
export async function objectDetails(storage: Storage, key: string): Promise<ObjectDetails> {
  const { client, bucket } = storage;
  let head;
  try {
    head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
  } catch (err) {
    if (statusOf(err) === 404 || (err as Error).name === 'NotFound' || (err as Error).name === 'NoSuchKey') {
      throw new NotFoundError(`no object "${key}" in bucket ${bucket}`);
    }
    throw storeError(err, `HEAD ${key}`);
  }
  let sha256: string | null = null;
  if (!isSha256SidecarKey(key)) {
    try {
      const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: sha256SidecarKey(key) }));
      const text = await res.Body!.transformToString();
      sha256 = /^([0-9a-f]{64})\b/.exec(text.trim())?.[1] ?? null;
    } catch (err) {
      if (statusOf(err) !== 404 && (err as Error).name !== 'NoSuchKey') throw storeError(err, `reading ${sha256SidecarKey(key)}`);
    }
  }
  return {
    key,
    size: head.ContentLength ?? 0,
    etag: head.ETag ?? null,
    sha256,
    lastModified: head.LastModified?.toISOString() ?? null,
    contentType: head.ContentType ?? null,
    metadata: head.Metadata ?? {},
  };
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
