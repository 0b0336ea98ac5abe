/**
 * export: two ops of one job kind.
 *
 * - `records` (the default): store a batch of records as one object,
 *   `records/{module}/{userId}/YYYY/MM/DD/{id}.{ext}`, add it to the manifest of the module and user
 *   (src/storage/manifest.ts, with the module's searchable field values), then emit
 *   `export_completed`. Formats: `json` (one JSON array), `jsonl` (one record per line) and
 *   `parquet` (schema inferred from the records, see src/storage/parquet.ts).
 * - `blob`: store one JSON value under `json_blobs/{key}.json` (key-value: a later write replaces
 *   it; no manifest).
 *
 * Idempotent: the id is the payload's, or the first 32 hex digits of the SHA-256 of the canonical
 * JSON of the records and format; the date is the job's creation time. A retry or rerun of the same
 * job writes the same key, and the manifest entry is replaced by id.
 *
 * When the store is down, the upload fails with a transient error: BullMQ retries with backoff,
 * and after the last attempt the job is parked in the dead-letter queue with its payload, so the
 * records wait in Redis (not on one worker's disk) until a redrive, by hand or automatic, replays
 * it. See docs/exports.md.
 */
import { Readable } from 'node:stream';
import { deriveExportId, redisKeys, type ExportResult, type JsonBlobResult } from '../queues/index.js';
import { jsonBlobKey, objectUrl, recordKey } from '../storage/keys.js';
import { searchableValues, upsertManifestEntry, type ManifestEntry } from '../storage/manifest.js';
import { parquetStream } from '../storage/parquet.js';
import { uploadStream } from '../storage/upload.js';
import type { Processor } from './context.js';
import { jobResumeStore } from './upload-state.js';

/** JSON: an array, one record per line; JSONL: one record per line. Streamed in chunks. */
function serialize(format: 'json' | 'jsonl', records: Record<string, unknown>[]): Readable {
  function* lines(): Generator<string> {
    if (format === 'json') yield '[\n';
    for (let i = 0; i < records.length; i++) {
      const line = JSON.stringify(records[i]);
      if (format === 'json') yield `${line}${i < records.length - 1 ? ',' : ''}\n`;
      else yield `${line}\n`;
    }
    if (format === 'json') yield ']\n';
  }
  return Readable.from(lines(), { objectMode: false });
}

const CONTENT_TYPES = {
  json: 'application/json; charset=utf-8',
  jsonl: 'application/x-ndjson; charset=utf-8',
  parquet: 'application/vnd.apache.parquet',
} as const;

export const exportRecords: Processor<'export'> = async (job, ctx) => {
  const p = job.data;
  const storage = ctx.storage();

  if (p.op === 'blob') {
    const key = jsonBlobKey(p.key);
    const body = `${JSON.stringify(p.value)}\n`;
    const uploaded = await uploadStream(storage, {
      key,
      body: Readable.from([body]),
      contentType: CONTENT_TYPES.json,
      metadata: { 'stowage-kind': 'json-blob' },
      signal: ctx.signal,
      logger: ctx.logger.child({ key }),
      metrics: ctx.metrics,
    });
    ctx.logger.info({ key, size: uploaded.size }, 'json blob stored');
    const result: JsonBlobResult = {
      op: 'blob',
      blobKey: p.key,
      key,
      size: uploaded.size,
      sha256: uploaded.sha256,
      url: objectUrl(storage.bucket, key),
    };
    return result;
  }

  const format = p.format;
  const id = p.id ?? deriveExportId(format, p.records);
  const createdAt = new Date(job.timestamp || Date.now());
  const key = recordKey(p.module, p.userId, createdAt, id, format);
  const log = ctx.logger.child({ key });

  await ctx.progress({ stage: 'uploading', bytes: 0 });
  const uploaded = await uploadStream(storage, {
    key,
    // Records live in the payload, so every attempt makes the same bytes: a big export resumes.
    body: () => (format === 'parquet' ? parquetStream(p.records) : serialize(format, p.records)),
    resume: jobResumeStore(ctx, job, 'records'),
    contentType: CONTENT_TYPES[format],
    metadata: { 'stowage-kind': 'records', 'stowage-module': p.module, 'stowage-records': String(p.records.length) },
    signal: ctx.signal,
    logger: log,
    metrics: ctx.metrics,
  });
  await ctx.progress({ stage: 'manifest', bytes: uploaded.size, totalBytes: uploaded.size });

  const exportsConfig = ctx.config.exports;
  const fields = exportsConfig.searchableFields[p.module] ?? [];
  const searchable = fields.length
    ? searchableValues(p.records, fields, { maxValues: exportsConfig.searchableMaxValues, maxChars: exportsConfig.searchableMaxChars })
    : undefined;
  const entry: ManifestEntry = {
    id,
    key,
    format,
    record_count: p.records.length,
    size: uploaded.size,
    sha256: uploaded.sha256,
    created_at: createdAt.toISOString(),
    ...(searchable ? { searchable } : {}),
  };
  const update = await upsertManifestEntry(
    {
      storage,
      redis: () => ctx.redis,
      lockKey: (module, userId) => redisKeys.manifestLock(ctx.config.prefix, module, userId),
      logger: log,
      compactBytes: exportsConfig.manifestCompactBytes,
    },
    p.module,
    p.userId,
    entry,
  );
  log.info({ size: uploaded.size, records: p.records.length, manifest: update }, 'records exported');

  await ctx.emit('export_completed', { module: p.module, userId: p.userId, key, records: p.records.length });
  // The result is the manifest entry (without the searchable values) plus where the object is.
  const { searchable: _searchable, ...described } = entry;
  const result: ExportResult = { op: 'records', ...described, format, url: objectUrl(storage.bucket, key) };
  return result;
};
