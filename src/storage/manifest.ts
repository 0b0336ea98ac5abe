/**
 * The manifest of one module and user (`manifests/{module}/{userId}/manifest.jsonl`): one JSON line
 * per stored record object. Entries are keyed by id: writing an entry whose id is already present
 * replaces it (a rerun of an export leaves one entry).
 *
 * Concurrency. Updates are read-modify-write, made safe one of two ways, chosen once per process
 * and store (endpoint + bucket):
 * - the store enforces conditional writes (R2, S3, MinIO): GET with its ETag, PUT with `If-Match`
 *   (`If-None-Match: *` when creating), and on 412 re-read and retry with jittered backoff;
 * - it does not (s3rver ignores both headers): updates of one manifest are serialized by a Redis
 *   lock (SET NX PX) whose value is a fencing token from INCR; the holder re-checks the token just
 *   before its PUT and releases with a compare-and-delete in Lua, so an expired holder neither
 *   writes after losing the lock (narrow window aside: the store cannot check the token) nor frees
 *   its successor's lock.
 * Detection: create a probe object, then PUT it again with a wrong `If-Match`; 412 means enforced,
 * a 2xx means the header was ignored.
 */
import { randomBytes } from 'node:crypto';
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import type { Redis } from 'ioredis';
import { StowageError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Storage } from './client.js';
import { CONDITIONAL_PROBE_PREFIX, manifestKey, type RecordFormat } from './keys.js';
import { storeError } from './upload.js';

export interface ManifestEntry {
  id: string;
  key: string;
  format: RecordFormat;
  record_count: number;
  size: number;
  sha256: string;
  /** ISO 8601. */
  created_at: string;
}

export interface ManifestDeps {
  storage: Storage;
  /** Needed only when the store does not enforce conditional writes (the lock path). */
  redis: () => Redis;
  /** BullMQ/Stowage key prefix for the lock keys. */
  prefix: string;
  logger?: Logger;
  /** Give up after this long (lock wait or 412 retries). Default 60 s. */
  timeoutMs?: number;
}

export interface ManifestUpdate {
  entries: number;
  attempts: number;
  mode: 'conditional' | 'lock';
}

const LOCK_TTL_MS = 15_000;

function statusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
}

function isPreconditionFailed(err: unknown): boolean {
  const name = (err as Error | null)?.name;
  return statusOf(err) === 412 || name === 'PreconditionFailed' || name === 'ConditionalRequestConflict';
}

function isNotFound(err: unknown): boolean {
  const name = (err as Error | null)?.name;
  return statusOf(err) === 404 || name === 'NoSuchKey' || name === 'NotFound';
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const backoff = (attempt: number, base = 20, cap = 1_000) => Math.min(cap, base * 2 ** Math.min(attempt, 10)) * (0.5 + Math.random() / 2);

export function parseManifest(text: string): ManifestEntry[] {
  const entries: ManifestEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    entries.push(JSON.parse(line) as ManifestEntry);
  }
  return entries;
}

export function serializeManifest(entries: ManifestEntry[]): string {
  return entries.map((e) => `${JSON.stringify(e)}\n`).join('');
}

/** The manifest's entries and ETag; no entries and a null ETag when it does not exist yet. */
export async function readManifest(storage: Storage, module: string, userId: string): Promise<{ entries: ManifestEntry[]; etag: string | null }> {
  const key = manifestKey(module, userId);
  try {
    const res = await storage.client.send(new GetObjectCommand({ Bucket: storage.bucket, Key: key }));
    const text = await res.Body!.transformToString('utf-8');
    return { entries: parseManifest(text), etag: res.ETag ?? null };
  } catch (err) {
    if (isNotFound(err)) return { entries: [], etag: null };
    throw storeError(err, `reading manifest ${key}`);
  }
}

function merge(entries: ManifestEntry[], entry: ManifestEntry): ManifestEntry[] {
  return [...entries.filter((e) => e.id !== entry.id), entry];
}

const conditionalSupport = new Map<string, Promise<boolean>>();

/**
 * Whether the store enforces `If-Match` on PUT. Probed once per process and store; a failed probe
 * is not cached (the next update probes again).
 */
export function storeEnforcesConditionalWrites(storage: Storage): Promise<boolean> {
  const id = `${storage.endpoint}|${storage.bucket}`;
  let known = conditionalSupport.get(id);
  if (!known) {
    known = probe(storage);
    conditionalSupport.set(id, known);
    known.catch(() => conditionalSupport.delete(id));
  }
  return known;
}

async function probe(storage: Storage): Promise<boolean> {
  const key = `${CONDITIONAL_PROBE_PREFIX}${randomBytes(8).toString('hex')}`;
  const put = (extra: { IfMatch?: string }) =>
    storage.client.send(new PutObjectCommand({ Bucket: storage.bucket, Key: key, Body: 'probe\n', ContentType: 'text/plain', ...extra }));
  try {
    await put({});
    try {
      await put({ IfMatch: '"00000000000000000000000000000000"' });
      return false;
    } catch (err) {
      if (isPreconditionFailed(err)) return true;
      throw err;
    }
  } catch (err) {
    throw storeError(err, 'probing conditional-write support');
  } finally {
    await storage.client.send(new DeleteObjectCommand({ Bucket: storage.bucket, Key: key })).catch(() => {});
  }
}

/** Forget probe results (tests). */
export function resetConditionalWriteDetection(): void {
  conditionalSupport.clear();
}

async function putManifest(storage: Storage, key: string, body: string, condition: { IfMatch?: string; IfNoneMatch?: string }) {
  await storage.client.send(
    new PutObjectCommand({
      Bucket: storage.bucket,
      Key: key,
      Body: body,
      ContentType: 'application/x-ndjson; charset=utf-8',
      ...condition,
    }),
  );
}

/** Add (or replace, by id) one entry in the manifest of `module`/`userId`. */
export async function upsertManifestEntry(deps: ManifestDeps, module: string, userId: string, entry: ManifestEntry): Promise<ManifestUpdate> {
  const conditional = await storeEnforcesConditionalWrites(deps.storage);
  return conditional ? updateConditionally(deps, module, userId, entry) : updateUnderLock(deps, module, userId, entry);
}

async function updateConditionally(deps: ManifestDeps, module: string, userId: string, entry: ManifestEntry): Promise<ManifestUpdate> {
  const key = manifestKey(module, userId);
  const deadline = Date.now() + (deps.timeoutMs ?? 60_000);
  for (let attempt = 1; ; attempt++) {
    const current = await readManifest(deps.storage, module, userId);
    const entries = merge(current.entries, entry);
    try {
      await putManifest(deps.storage, key, serializeManifest(entries), current.etag ? { IfMatch: current.etag } : { IfNoneMatch: '*' });
      return { entries: entries.length, attempts: attempt, mode: 'conditional' };
    } catch (err) {
      if (!isPreconditionFailed(err)) throw storeError(err, `writing manifest ${key}`);
      if (Date.now() > deadline) {
        throw new StowageError('STOWAGE_ERR_STORE', `manifest ${key}: still conflicting after ${attempt} attempts`, { cause: err });
      }
      deps.logger?.debug({ key, attempt }, 'manifest changed underneath; retrying');
      await sleep(backoff(attempt));
    }
  }
}

const RELEASE = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`;

export function manifestLockKey(prefix: string, module: string, userId: string): string {
  return `${prefix}:stowage:manifest-lock:${module}/${userId}`;
}

async function updateUnderLock(deps: ManifestDeps, module: string, userId: string, entry: ManifestEntry): Promise<ManifestUpdate> {
  const key = manifestKey(module, userId);
  const redis = deps.redis();
  const lockKey = manifestLockKey(deps.prefix, module, userId);
  const token = String(await redis.incr(`${lockKey}:fence`));
  const deadline = Date.now() + (deps.timeoutMs ?? 60_000);
  let attempt = 0;
  for (;;) {
    attempt++;
    const ok = await redis.set(lockKey, token, 'PX', LOCK_TTL_MS, 'NX');
    if (ok === 'OK') break;
    if (Date.now() > deadline) {
      throw new StowageError('STOWAGE_ERR_STORE', `manifest ${key}: lock not acquired after ${attempt} attempts`);
    }
    await sleep(backoff(attempt, 10, 200));
  }
  try {
    const current = await readManifest(deps.storage, module, userId);
    const entries = merge(current.entries, entry);
    // Fencing: do not write if the lock expired and someone else holds it now.
    if ((await redis.get(lockKey)) !== token) {
      throw new StowageError('STOWAGE_ERR_STORE', `manifest ${key}: lock lost before writing (token ${token})`);
    }
    try {
      await putManifest(deps.storage, key, serializeManifest(entries), {});
    } catch (err) {
      throw storeError(err, `writing manifest ${key}`);
    }
    return { entries: entries.length, attempts: attempt, mode: 'lock' };
  } finally {
    await redis.eval(RELEASE, 1, lockKey, token).catch((err: unknown) => deps.logger?.warn({ err, key }, 'releasing manifest lock failed'));
  }
}
