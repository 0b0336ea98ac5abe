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
  type _Object,
} from '@aws-sdk/client-s3';
import { NotFoundError } from '../errors.js';
import type { Storage } from './client.js';
import { storeCapabilities } from './capabilities.js';
import { isSha256SidecarKey, sha256SidecarKey } from './keys.js';
import { statusOf, storeError } from './store-errors.js';

/** One listed object. */
export interface ListedObject {
  key: string;
  size: number;
  lastModified: Date;
  etag: string | null;
}

/**
 * Every object under `prefix`, page by page (1000 keys per request), in key order. `onPage` gets
 * the running count, for progress on long listings.
 *
 * ListObjectsV2 with continuation tokens where the probe showed they work (R2, S3, MinIO, Ceph
 * RGW); otherwise ListObjects (v1) with `Marker` = the last key seen: s3rver 3.7 builds V2 tokens
 * with DES, which OpenSSL 3 (Node 17+) refuses, so every truncated V2 page is a 500 there.
 */
export async function* listObjects(
  storage: Storage,
  options: { prefix?: string; limit?: number; signal?: AbortSignal; onPage?: (listed: number) => void } = {},
): AsyncGenerator<ListedObject> {
  const what = `listing ${options.prefix ? `"${options.prefix}"` : 'the bucket'}`;
  // V1 markers work everywhere: a probe that cannot run (read-only credentials cannot write its
  // objects) must not stop a listing.
  const v2 = await storeCapabilities(storage).then(
    (c) => c.listObjectsV2,
    () => false,
  );
  let cursor: string | undefined;
  let listed = 0;
  const limit = options.limit ?? Infinity;
  do {
    options.signal?.throwIfAborted();
    const common = {
      Bucket: storage.bucket,
      ...(options.prefix ? { Prefix: options.prefix } : {}),
      MaxKeys: Math.min(1000, limit - listed),
    };
    const sendOptions = options.signal ? { abortSignal: options.signal } : {};
    let contents: _Object[];
    try {
      if (v2) {
        const page = await storage.client.send(
          new ListObjectsV2Command({ ...common, ...(cursor ? { ContinuationToken: cursor } : {}) }),
          sendOptions,
        );
        contents = page.Contents ?? [];
        cursor = page.IsTruncated ? page.NextContinuationToken : undefined;
      } else {
        const page = await storage.client.send(new ListObjectsCommand({ ...common, ...(cursor ? { Marker: cursor } : {}) }), sendOptions);
        contents = page.Contents ?? [];
        cursor = page.IsTruncated ? (page.NextMarker ?? contents.at(-1)?.Key) : undefined;
      }
    } catch (err) {
      throw storeError(err, what);
    }
    for (const o of contents) {
      if (!o.Key) continue;
      listed++;
      yield { key: o.Key, size: o.Size ?? 0, lastModified: o.LastModified ?? new Date(0), etag: o.ETag ?? null };
      if (listed >= limit) return;
    }
    options.onPage?.(listed);
  } while (cursor);
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
      if (head.ContentLength !== Buffer.byteLength(body))
        throw new Error(`size ${head.ContentLength}, expected ${Buffer.byteLength(body)}`);
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
