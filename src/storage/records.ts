/**
 * Read side of record exports: look objects up in the manifest of a module and user (its head and
 * compacted segments), read the records of JSON, JSONL and Parquet objects, search them, presign a
 * download, and read JSON blobs. Every record lookup goes through the caller's own manifest
 * (`manifests/{module}/{userId}/…`), so a user only ever reaches keys listed for that user:
 * another user's id answers null (404 upstream).
 */
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { ValidationError } from '../errors.js';
import { safeId } from '../ids.js';
import type { Storage } from './client.js';
import { jsonBlobKey, RESERVED_TOP_LEVEL_PREFIXES, reservedModuleReason } from './keys.js';
import { findManifestEntry, readManifest, type ManifestEntry } from './manifest.js';
import { readParquetRows } from './parquet.js';
import { presignDownload, type PresignedUrl } from './presign.js';
import { storeError } from './store-errors.js';

export type StoredRecord = Record<string, unknown>;

export interface RecordObject {
  entry: ManifestEntry;
  /** The records (Parquet JSON columns parsed back). */
  records: StoredRecord[];
}

/**
 * A search result: a record that matched (`source: 'record'`, with its index in the object), or a
 * manifest entry whose id or searchable field values matched while its object was not read
 * (`source: 'manifest'`, with the matching values per field).
 */
export type SearchHit =
  | { source: 'record'; id: string; key: string; format: string; created_at: string; index: number; record: StoredRecord }
  | { source: 'manifest'; id: string; key: string; format: string; created_at: string; matched: Record<string, unknown[]> };

/**
 * A module to store records under: a safeId that is none of Stowage's top-level prefixes (keys.ts).
 * Reads take any safeId, so records stored under such a module by an earlier version stay readable.
 */
export const recordModule = safeId.refine((m) => !RESERVED_TOP_LEVEL_PREFIXES.has(m), {
  error: (issue) => reservedModuleReason(String(issue.input)) ?? 'is reserved',
});

/** Parse an object's bytes by its format (json: an array or a single object; jsonl: lines). */
export function parseRecords(format: string, text: string): StoredRecord[] {
  if (format === 'json') {
    const value = JSON.parse(text) as unknown;
    return (Array.isArray(value) ? value : [value]) as StoredRecord[];
  }
  if (format === 'jsonl') {
    return text
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as StoredRecord);
  }
  throw new Error(`records of format ${format} cannot be read here`);
}

async function readObjectBytes(storage: Storage, key: string): Promise<Buffer> {
  try {
    const res = await storage.client.send(new GetObjectCommand({ Bucket: storage.bucket, Key: key }));
    return Buffer.from(await res.Body!.transformToByteArray());
  } catch (err) {
    throw storeError(err, `reading ${key}`);
  }
}

/** The records of one listed object, whatever its format. */
async function readRecords(storage: Storage, entry: ManifestEntry): Promise<StoredRecord[]> {
  const bytes = await readObjectBytes(storage, entry.key);
  if (entry.format === 'parquet') return readParquetRows(bytes);
  return parseRecords(entry.format, bytes.toString('utf-8'));
}

/** module, userId (and id) end up in keys: refuse anything that is not a safeId, naming it. */
function checkIds(ids: Record<string, string>): void {
  const problems: string[] = [];
  for (const [name, value] of Object.entries(ids)) {
    const r = safeId.safeParse(value);
    if (!r.success) problems.push(...r.error.issues.map((i) => `${name}: ${i.message}`));
  }
  if (problems.length) throw new ValidationError('record lookup', problems);
}

/** One stored object of `userId` with its records; null when the manifest does not list it. */
export async function getRecord(storage: Storage, module: string, userId: string, id: string): Promise<RecordObject | null> {
  checkIds({ module, userId, id });
  const entry = await findManifestEntry(storage, module, userId, id);
  if (!entry) return null;
  return { entry, records: await readRecords(storage, entry) };
}

export interface ListOptions {
  /** Inclusive lower bound on created_at. */
  from?: Date;
  /** Exclusive upper bound on created_at. */
  to?: Date;
}

/** The manifest entries of a module and user (segments included), oldest first, optionally within [from, to). */
export async function listRecords(storage: Storage, module: string, userId: string, options: ListOptions = {}): Promise<ManifestEntry[]> {
  checkIds({ module, userId });
  const { entries } = await readManifest(storage, module, userId);
  const from = options.from?.getTime() ?? -Infinity;
  const to = options.to?.getTime() ?? Infinity;
  return entries
    .filter((e) => {
      const t = Date.parse(e.created_at);
      return t >= from && t < to;
    })
    .sort((a, b) => (a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1 : 0));
}

/** True when any string or number value in `value` (nested) contains `needle` (lower-cased). */
function matches(value: unknown, needle: string): boolean {
  if (typeof value === 'string') return value.toLowerCase().includes(needle);
  if (typeof value === 'number' || typeof value === 'boolean') return String(value).toLowerCase().includes(needle);
  if (Array.isArray(value)) return value.some((v) => matches(v, needle));
  if (value && typeof value === 'object') return Object.values(value).some((v) => matches(v, needle));
  return false;
}

export interface SearchOptions extends ListOptions {
  /** At most this many hits. Default 100. */
  limit?: number;
  /**
   * Which objects are read to match their records: `all` (default; JSON, JSONL and Parquet),
   * `text` (JSON and JSONL only; Parquet objects match through their manifest entry) or `none`
   * (the manifest alone: ids and searchable field values, no object read).
   */
  read?: 'all' | 'text' | 'none';
}

/** The values of an entry that match `needle`, per field (`id` and each searchable field). */
function manifestMatches(entry: ManifestEntry, needle: string): Record<string, unknown[]> | null {
  const matched: Record<string, unknown[]> = {};
  if (entry.id.toLowerCase().includes(needle)) matched.id = [entry.id];
  for (const [field, values] of Object.entries(entry.searchable ?? {})) {
    const hit = values.filter((v) => matches(v, needle));
    if (hit.length) matched[field] = hit;
  }
  return Object.keys(matched).length ? matched : null;
}

/**
 * Records whose field values contain `text` (case-insensitive substring), newest objects first,
 * plus manifest entries that match by id or searchable field values where the object was not read
 * or none of its records matched. Reads each object it searches in turn: meant for per-user volumes;
 * `read: 'none'` answers from the manifest alone.
 */
export async function searchRecords(
  storage: Storage,
  module: string,
  userId: string,
  text: string,
  options: SearchOptions = {},
): Promise<SearchHit[]> {
  const needle = text.toLowerCase();
  const limit = options.limit ?? 100;
  const read = options.read ?? 'all';
  const hits: SearchHit[] = [];
  const entries = (await listRecords(storage, module, userId, options)).reverse();
  for (const entry of entries) {
    const base = { id: entry.id, key: entry.key, format: entry.format, created_at: entry.created_at };
    const readIt = read === 'all' || (read === 'text' && entry.format !== 'parquet');
    let found = false;
    if (readIt) {
      const records = await readRecords(storage, entry);
      for (let i = 0; i < records.length; i++) {
        if (!matches(records[i], needle)) continue;
        found = true;
        hits.push({ source: 'record', ...base, index: i, record: records[i]! });
        if (hits.length >= limit) return hits;
      }
    }
    if (found) continue;
    const matched = manifestMatches(entry, needle);
    if (matched) {
      hits.push({ source: 'manifest', ...base, matched });
      if (hits.length >= limit) return hits;
    }
  }
  return hits;
}

/** A presigned GET URL for one of `userId`'s objects; null when the manifest does not list it. */
export async function recordUrl(
  storage: Storage,
  module: string,
  userId: string,
  id: string,
  expiresInSeconds?: number,
): Promise<(PresignedUrl & { entry: ManifestEntry }) | null> {
  checkIds({ module, userId, id });
  const entry = await findManifestEntry(storage, module, userId, id);
  if (!entry) return null;
  const signed = await presignDownload(storage, { key: entry.key, ...(expiresInSeconds ? { expiresInSeconds } : {}) });
  return { ...signed, entry };
}

/** The JSON value stored under `json_blobs/{key}.json`; null when there is none. */
export async function getJsonBlob<T = unknown>(storage: Storage, key: string): Promise<T | null> {
  const valid = safeId.safeParse(key);
  if (!valid.success) throw ValidationError.fromZod('json blob key', valid.error, 'key');
  const objectKey = jsonBlobKey(key);
  try {
    const res = await storage.client.send(new GetObjectCommand({ Bucket: storage.bucket, Key: objectKey }));
    return JSON.parse(await res.Body!.transformToString('utf-8')) as T;
  } catch (err) {
    const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
    if (status === 404 || (err as Error).name === 'NoSuchKey') return null;
    throw storeError(err, `reading ${objectKey}`);
  }
}

/** The read functions bound to one Storage (what `createRecordReader` in src/index.ts returns). */
export interface RecordReader {
  getRecord(module: string, userId: string, id: string): Promise<RecordObject | null>;
  listRecords(module: string, userId: string, options?: ListOptions): Promise<ManifestEntry[]>;
  searchRecords(module: string, userId: string, text: string, options?: SearchOptions): Promise<SearchHit[]>;
  recordUrl(
    module: string,
    userId: string,
    id: string,
    expiresInSeconds?: number,
  ): Promise<(PresignedUrl & { entry: ManifestEntry }) | null>;
  getJsonBlob<T = unknown>(key: string): Promise<T | null>;
  close(): void;
}

export function recordReader(storage: Storage): RecordReader {
  return {
    getRecord: (m, u, id) => getRecord(storage, m, u, id),
    listRecords: (m, u, o) => listRecords(storage, m, u, o),
    searchRecords: (m, u, t, o) => searchRecords(storage, m, u, t, o),
    recordUrl: (m, u, id, e) => recordUrl(storage, m, u, id, e),
    getJsonBlob: (key) => getJsonBlob(storage, key),
    close: () => storage.close(),
  };
}
