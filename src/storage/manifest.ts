/**
 * The manifest of one module and user (`manifests/{module}/{userId}/manifest.jsonl`): one JSON line
 * per stored record object. Entries are keyed by id: writing an entry whose id is already present
 * replaces it (a rerun of an export leaves one entry).
 *
 * Compaction. Once the head's entries pass `compactBytes` (config `exports.manifestCompactBytes`),
 * the next update first writes those entries, unchanged, to a segment
 * (`manifests/{module}/{userId}/segments/YYYY-MM-DD-{seq}-{sha12}.jsonl`, src/storage/keys.ts) and
 * then swaps in a head that holds one pointer line per segment (`{"type":"segment",…}`) and the new
 * entry only. So an update rewrites at most about `compactBytes` plus the pointer lines (~200 bytes
 * per segment), however long the history. Readers take segments in sequence order, then the head;
 * a later line for an id replaces an earlier one.
 * The segment's content is a function of the head state it came from, and its name is derived
 * from that content, so two writers compacting the same state write the same bytes to the same
 * key, and a segment is never overwritten with other bytes. The head swap is the same guarded
 * write as any update (below), which keeps the 50-concurrent-writers guarantee.
 *
 * Concurrency. Updates are read-modify-write, made safe one of two ways, chosen by the store's
 * probed capabilities (capabilities.ts):
 * - it honours create-only writes and compare-and-swap (R2, S3, MinIO, Ceph RGW): GET with its
 *   ETag, PUT with `If-Match` in the form the store honours (quoted for R2 and S3; radosgw wants it
 *   unquoted) or `If-None-Match: *` when creating, and on 412 re-read and retry with jittered
 *   backoff. Should 412s persist against an unchanged ETag (the store refusing its own ETag, not
 *   contention), that manifest switches to the lock path, with a warning: never a livelock;
 * - it does not (s3rver ignores both headers): updates of one manifest are serialized by a Redis
 *   lock (SET NX PX) whose value is a fencing token from INCR; the holder re-checks the token just
 *   before its PUT and releases with a compare-and-delete in Lua, so an expired holder neither
 *   writes after losing the lock (narrow window aside: the store cannot check the token) nor frees
 *   its successor's lock.
 */
import { createHash } from 'node:crypto';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import type { Redis } from 'ioredis';
import { mapLimit } from '../concurrency.js';
import { StowageError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { retry, type BackoffOptions } from '../retry.js';
import type { Storage } from './client.js';
import { etagForIfMatch, storeCapabilities, type EtagForm } from './capabilities.js';
import { manifestKey, manifestSegmentKey, type RecordFormat } from './keys.js';
import { isNotFound, isPreconditionFailed, storeError } from './store-errors.js';

export interface ManifestEntry {
  id: string;
  key: string;
  format: RecordFormat;
  record_count: number;
  size: number;
  sha256: string;
  /** ISO 8601. */
  created_at: string;
  /**
   * Values of the module's searchable fields (config `exports.searchableFields`) found in the
   * object's records: per field, the first distinct values (bounded), strings cut short.
   */
  searchable?: Record<string, SearchableValue[]>;
}

export type SearchableValue = string | number | boolean;

/** A head line that points at a compacted segment. */
export interface SegmentPointer {
  type: 'segment';
  key: string;
  /** 1-based, in compaction order. */
  seq: number;
  entries: number;
  bytes: number;
  sha256: string;
  /** Smallest and largest created_at of its entries. */
  oldest: string;
  newest: string;
}

/** The head object: pointers to segments (oldest first) and the entries not yet compacted. */
export interface ManifestHead {
  segments: SegmentPointer[];
  entries: ManifestEntry[];
  etag: string | null;
  /** Size of the head object in bytes (0 when absent). */
  bytes: number;
}

export const DEFAULT_COMPACT_BYTES = 256 * 1024;

export interface ManifestDeps {
  storage: Storage;
  /** Needed only when the store does not enforce conditional writes (the lock path). */
  redis: () => Redis;
  /**
   * The Redis key of the lock of one manifest (the lock path only); its fencing counter sits beside
   * it at `<key>:fence`. The caller owns the key layout (src/queues/keys.ts `manifestLock`), so
   * storage knows no Redis key formats.
   */
  lockKey: (module: string, userId: string) => string;
  logger?: Logger;
  /** Give up after this long (lock wait or 412 retries). Default 60 s. */
  timeoutMs?: number;
  /** Compact once the head's entries reach this many bytes. Default 256 KiB. */
  compactBytes?: number;
  /**
   * Pin the write mode instead of the probe's choice: an If-Match ETag form, or null for the
   * Redis lock (for a store whose conditional writes an operator does not trust; tests).
   */
  etagForm?: EtagForm | null;
}

export interface ManifestUpdate {
  /** Entries in the head after the update (compacted ones are in segments). */
  entries: number;
  segments: number;
  /** The segment this update wrote, if it compacted. */
  compacted?: string;
  attempts: number;
  mode: 'conditional' | 'lock';
}

const LOCK_TTL_MS = 15_000;

const DEFAULT_TIMEOUT_MS = 60_000;
/** Between conflicting writes: 40 ms doubling to 1 s, up to half taken off (writers spread out). */
const CONFLICT_BACKOFF: BackoffOptions = { delayMs: 40, maxDelayMs: 1_000, jitter: 0.5 };
/** Polling a held lock: 20 ms doubling to 200 ms (a holder keeps it for one read-modify-write). */
const LOCK_BACKOFF: BackoffOptions = { delayMs: 20, maxDelayMs: 200, jitter: 0.5 };

/** Someone else holds the manifest's lock: the one failure the lock wait retries. */
class LockHeld extends Error {
  override name = 'LockHeld';
}

/** The entry lines of a manifest or segment text (pointer lines are skipped). */
export function parseManifest(text: string): ManifestEntry[] {
  return parseHead(text).entries;
}

function parseHead(text: string): { segments: SegmentPointer[]; entries: ManifestEntry[] } {
  const segments: SegmentPointer[] = [];
  const entries: ManifestEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const value = JSON.parse(line) as ManifestEntry | SegmentPointer;
    if ((value as SegmentPointer).type === 'segment') segments.push(value as SegmentPointer);
    else entries.push(value as ManifestEntry);
  }
  return { segments, entries };
}

export function serializeManifest(entries: ManifestEntry[], segments: SegmentPointer[] = []): string {
  return [...segments, ...entries].map((e) => `${JSON.stringify(e)}\n`).join('');
}

/** The head object as stored: its segment pointers, its own entries, ETag and size. */
export async function readManifestHead(storage: Storage, module: string, userId: string): Promise<ManifestHead> {
  const key = manifestKey(module, userId);
  try {
    const res = await storage.client.send(new GetObjectCommand({ Bucket: storage.bucket, Key: key }));
    const text = await res.Body!.transformToString('utf-8');
    return { ...parseHead(text), etag: res.ETag ?? null, bytes: Buffer.byteLength(text) };
  } catch (err) {
    if (isNotFound(err)) return { segments: [], entries: [], etag: null, bytes: 0 };
    throw storeError(err, `reading manifest ${key}`);
  }
}

/** The entries of one segment. A listed segment that is missing is an error, never "no entries". */
export async function readSegment(storage: Storage, pointer: SegmentPointer): Promise<ManifestEntry[]> {
  try {
    const res = await storage.client.send(new GetObjectCommand({ Bucket: storage.bucket, Key: pointer.key }));
    return parseManifest(await res.Body!.transformToString('utf-8'));
  } catch (err) {
    throw storeError(err, `reading manifest segment ${pointer.key}`);
  }
}

function merge(entries: ManifestEntry[], entry: ManifestEntry): ManifestEntry[] {
  return [...entries.filter((e) => e.id !== entry.id), entry];
}

/** Last line wins per id; the survivors keep the position of their last line. */
function dedupe(entries: ManifestEntry[]): ManifestEntry[] {
  const last = new Map<string, number>();
  entries.forEach((e, i) => last.set(e.id, i));
  return entries.filter((e, i) => last.get(e.id) === i);
}

/**
 * Every entry of the manifest, across its segments and head (a later line for an id replaces an
 * earlier one), with the head's ETag; no entries and a null ETag when it does not exist yet.
 */
export async function readManifest(
  storage: Storage,
  module: string,
  userId: string,
): Promise<{ entries: ManifestEntry[]; etag: string | null; segments: SegmentPointer[] }> {
  const head = await readManifestHead(storage, module, userId);
  const segmented = await mapLimit(head.segments, 8, (p) => readSegment(storage, p));
  return { entries: dedupe([...segmented.flat(), ...head.entries]), etag: head.etag, segments: head.segments };
}

/**
 * One entry by id without reading more than needed: the head first, then segments newest first
 * (the first hit is the latest line for that id).
 */
export async function findManifestEntry(storage: Storage, module: string, userId: string, id: string): Promise<ManifestEntry | null> {
  const head = await readManifestHead(storage, module, userId);
  const inHead = head.entries.findLast((e) => e.id === id);
  if (inHead) return inHead;
  for (const pointer of [...head.segments].reverse()) {
    const found = (await readSegment(storage, pointer)).findLast((e) => e.id === id);
    if (found) return found;
  }
  return null;
}

/**
 * The manifest entry fields for `records`: per searchable field, the first `maxValues` distinct
 * scalar values (array elements count one by one), strings cut to `maxChars`. Undefined when none.
 */
export function searchableValues(
  records: Record<string, unknown>[],
  fields: readonly string[],
  options: { maxValues?: number; maxChars?: number } = {},
): Record<string, SearchableValue[]> | undefined {
  const maxValues = options.maxValues ?? 20;
  const maxChars = options.maxChars ?? 200;
  const out: Record<string, SearchableValue[]> = {};
  for (const field of fields) {
    const seen = new Set<SearchableValue>();
    const add = (v: unknown) => {
      if (seen.size >= maxValues) return;
      if (typeof v === 'string') seen.add(v.length > maxChars ? v.slice(0, maxChars) : v);
      else if (typeof v === 'number' || typeof v === 'boolean') seen.add(v);
      else if (Array.isArray(v)) v.forEach(add);
    };
    for (const record of records) {
      if (seen.size >= maxValues) break;
      add(record[field]);
    }
    if (seen.size) out[field] = [...seen];
  }
  return Object.keys(out).length ? out : undefined;
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

/**
 * Manifests whose conditional writes kept failing against an unchanged ETag (the store refuses the
 * form it seemed to honour): they take the lock path for the rest of the process.
 */
const lockedManifests = new Set<string>();

/** How a store's manifests are updated: the If-Match form it honours, or null for the Redis lock. */
export async function manifestWriteMode(storage: Storage): Promise<EtagForm | null> {
  const caps = await storeCapabilities(storage);
  return caps.createOnly && caps.compareAndSwap ? caps.compareAndSwap : null;
}

/** Add (or replace, by id) one entry in the manifest of `module`/`userId`. */
export async function upsertManifestEntry(
  deps: ManifestDeps,
  module: string,
  userId: string,
  entry: ManifestEntry,
): Promise<ManifestUpdate> {
  const form = deps.etagForm !== undefined ? deps.etagForm : await manifestWriteMode(deps.storage);
  const id = `${deps.storage.endpoint}|${deps.storage.bucket}|${manifestKey(module, userId)}`;
  if (form && !lockedManifests.has(id)) {
    const done = await updateConditionally(deps, module, userId, entry, form, () => lockedManifests.has(id));
    if (done) return done;
    lockedManifests.add(id);
  }
  return updateUnderLock(deps, module, userId, entry);
}

interface NextHead {
  body: string;
  entries: number;
  segments: number;
  compacted?: string;
}

/**
 * The head that follows `current` once `entry` is added. When `current`'s entries reached the
 * threshold, they are first written to their segment (idempotent: same state, same key, same bytes).
 */
async function nextHead(
  deps: ManifestDeps,
  module: string,
  userId: string,
  current: ManifestHead,
  entry: ManifestEntry,
): Promise<NextHead> {
  const headEntriesText = serializeManifest(current.entries);
  const threshold = deps.compactBytes ?? DEFAULT_COMPACT_BYTES;
  if (current.entries.length === 0 || Buffer.byteLength(headEntriesText) < threshold) {
    const entries = merge(current.entries, entry);
    return { body: serializeManifest(entries, current.segments), entries: entries.length, segments: current.segments.length };
  }
  const sha256 = createHash('sha256').update(headEntriesText).digest('hex');
  const times = current.entries.map((e) => e.created_at).sort();
  const seq = (current.segments.at(-1)?.seq ?? 0) + 1;
  const key = manifestSegmentKey(module, userId, new Date(times[0]!), seq, sha256);
  try {
    await deps.storage.client.send(
      new PutObjectCommand({
        Bucket: deps.storage.bucket,
        Key: key,
        Body: headEntriesText,
        ContentType: 'application/x-ndjson; charset=utf-8',
      }),
    );
  } catch (err) {
    throw storeError(err, `writing manifest segment ${key}`);
  }
  const pointer: SegmentPointer = {
    type: 'segment',
    key,
    seq,
    entries: current.entries.length,
    bytes: Buffer.byteLength(headEntriesText),
    sha256,
    oldest: times[0]!,
    newest: times.at(-1)!,
  };
  const segments = [...current.segments, pointer];
  deps.logger?.info({ key, entries: pointer.entries, bytes: pointer.bytes }, 'manifest compacted into a segment');
  return { body: serializeManifest([entry], segments), entries: 1, segments: segments.length, compacted: key };
}

function outcome(next: NextHead, attempts: number, mode: ManifestUpdate['mode']): ManifestUpdate {
  return { entries: next.entries, segments: next.segments, ...(next.compacted ? { compacted: next.compacted } : {}), attempts, mode };
}

/**
 * Conflicts that persist with a freshly read, unchanged ETag after this many tries mean the store
 * refuses the If-Match form it seemed to honour (not contention: contention changes the ETag).
 */
const STUCK_CONFLICTS = 3;

/**
 * Read, write with If-Match (If-None-Match: * when creating), re-read on 412. Returns null when the
 * conflicts are the store's and not other writers' (see STUCK_CONFLICTS): the caller switches that
 * manifest to the lock path, so a storm of writers can never livelock here.
 */
async function updateConditionally(
  deps: ManifestDeps,
  module: string,
  userId: string,
  entry: ManifestEntry,
  form: EtagForm,
  switched: () => boolean,
): Promise<ManifestUpdate | null> {
  const key = manifestKey(module, userId);
  let previous: string | null | undefined;
  let stuck = 0;
  let attempts = 0;
  try {
    // Only a 412 is retried (re-read, rebuild, write again), until the deadline.
    return await retry(
      async (attempt) => {
        attempts = attempt;
        // Another update in this process found the store refusing: its lock writes change the ETag,
        // which would keep resetting this one's count.
        if (switched()) return null;
        const current = await readManifestHead(deps.storage, module, userId);
        stuck = attempt > 1 && current.etag === previous ? stuck + 1 : 0;
        if (stuck >= STUCK_CONFLICTS) {
          deps.logger?.warn(
            { key, attempt, etag: current.etag, form },
            'manifest writes keep conflicting with an unchanged ETag: the store does not honour this If-Match form; using the Redis lock for this manifest',
          );
          return null;
        }
        previous = current.etag;
        const next = await nextHead(deps, module, userId, current, entry);
        try {
          await putManifest(
            deps.storage,
            key,
            next.body,
            current.etag ? { IfMatch: etagForIfMatch(current.etag, form) } : { IfNoneMatch: '*' },
          );
        } catch (err) {
          throw isPreconditionFailed(err) ? err : storeError(err, `writing manifest ${key}`);
        }
        return outcome(next, attempt, 'conditional');
      },
      {
        ...CONFLICT_BACKOFF,
        maxAttempts: Number.POSITIVE_INFINITY,
        timeoutMs: deps.timeoutMs ?? DEFAULT_TIMEOUT_MS,
        retryable: isPreconditionFailed,
        onRetry: ({ attempt }) => deps.logger?.debug({ key, attempt }, 'manifest changed underneath; retrying'),
      },
    );
  } catch (err) {
    if (!isPreconditionFailed(err)) throw err;
    throw new StowageError('STOWAGE_ERR_STORE', `manifest ${key}: still conflicting after ${attempts} attempts`, { cause: err });
  }
}

const RELEASE = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`;

async function updateUnderLock(deps: ManifestDeps, module: string, userId: string, entry: ManifestEntry): Promise<ManifestUpdate> {
  const key = manifestKey(module, userId);
  const redis = deps.redis();
  const lockKey = deps.lockKey(module, userId);
  const token = String(await redis.incr(`${lockKey}:fence`));
  let attempts = 0;
  try {
    await retry(
      async (attempt) => {
        attempts = attempt;
        if ((await redis.set(lockKey, token, 'PX', LOCK_TTL_MS, 'NX')) !== 'OK') throw new LockHeld(lockKey);
      },
      {
        ...LOCK_BACKOFF,
        maxAttempts: Number.POSITIVE_INFINITY,
        timeoutMs: deps.timeoutMs ?? DEFAULT_TIMEOUT_MS,
        retryable: (err) => err instanceof LockHeld,
      },
    );
  } catch (err) {
    if (!(err instanceof LockHeld)) throw err;
    throw new StowageError('STOWAGE_ERR_STORE', `manifest ${key}: lock not acquired after ${attempts} attempts`);
  }
  try {
    const current = await readManifestHead(deps.storage, module, userId);
    const next = await nextHead(deps, module, userId, current, entry);
    // Fencing: do not write if the lock expired and someone else holds it now.
    if ((await redis.get(lockKey)) !== token) {
      throw new StowageError('STOWAGE_ERR_STORE', `manifest ${key}: lock lost before writing (token ${token})`);
    }
    try {
      await putManifest(deps.storage, key, next.body, {});
    } catch (err) {
      throw storeError(err, `writing manifest ${key}`);
    }
    return outcome(next, attempts, 'lock');
  } finally {
    await redis.eval(RELEASE, 1, lockKey, token).catch((err: unknown) => deps.logger?.warn({ err, key }, 'releasing manifest lock failed'));
  }
}
