/**
 * Read side of record exports: look objects up in the manifest of a module and user, read the
 * records of JSON, JSONL and Parquet objects, search them, and presign a download. Every lookup goes through
 * the caller's own manifest (`manifests/{module}/{userId}/…`), so a user only ever reaches keys
 * listed for that user: another user's id answers null (404 upstream).
 */
import { GetObjectCommand } from '@aws-sdk/client-s3';
import type { Storage } from './client.js';
import { readManifest, type ManifestEntry } from './manifest.js';
import { readParquetRows } from './parquet.js';
import { presignDownload, type PresignedUrl } from './presign.js';
import { storeError } from './upload.js';

export type StoredRecord = Record<string, unknown>;

export interface RecordObject {
  entry: ManifestEntry;
  /** The records (Parquet JSON columns parsed back). */
  records: StoredRecord[];
}

export interface SearchHit {
  id: string;
  key: string;
  created_at: string;
  /** Index of the record within its object. */
  index: number;
  record: StoredRecord;
}

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

async function findEntry(storage: Storage, module: string, userId: string, id: string): Promise<ManifestEntry | null> {
  const { entries } = await readManifest(storage, module, userId);
  return entries.find((e) => e.id === id) ?? null;
}

/** One stored object of `userId` with its records; null when the manifest does not list it. */
export async function getRecord(storage: Storage, module: string, userId: string, id: string): Promise<RecordObject | null> {
  const entry = await findEntry(storage, module, userId, id);
  if (!entry) return null;
  return { entry, records: await readRecords(storage, entry) };
}

export interface ListOptions {
  /** Inclusive lower bound on created_at. */
  from?: Date;
  /** Exclusive upper bound on created_at. */
  to?: Date;
}

/** The manifest entries of a module and user, oldest first, optionally within [from, to). */
export async function listRecords(storage: Storage, module: string, userId: string, options: ListOptions = {}): Promise<ManifestEntry[]> {
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
}

/**
 * Records (of every format) whose field values contain `text` (case-insensitive substring),
 * newest objects first. Reads each listed object in turn: meant for per-user volumes.
 */
export async function searchRecords(storage: Storage, module: string, userId: string, text: string, options: SearchOptions = {}): Promise<SearchHit[]> {
  const needle = text.toLowerCase();
  const limit = options.limit ?? 100;
  const hits: SearchHit[] = [];
  const entries = (await listRecords(storage, module, userId, options)).reverse();
  for (const entry of entries) {
    const records = await readRecords(storage, entry);
    for (let i = 0; i < records.length; i++) {
      if (!matches(records[i], needle)) continue;
      hits.push({ id: entry.id, key: entry.key, created_at: entry.created_at, index: i, record: records[i]! });
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
  const entry = await findEntry(storage, module, userId, id);
  if (!entry) return null;
  const signed = await presignDownload(storage, { key: entry.key, ...(expiresInSeconds ? { expiresInSeconds } : {}) });
  return { ...signed, entry };
}
