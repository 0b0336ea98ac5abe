/**
 * export: store a batch of records as one object, `{module}/{userId}/YYYY/MM/DD/{id}.{ext}`, and
 * add it to the manifest of the module and user (src/storage/manifest.ts), then emit
 * `export_completed`.
 *
 * Formats: `json` (one JSON array), `jsonl` (one record per line) and `parquet` (schema inferred
 * from the records, see src/storage/parquet.ts).
 *
 * Idempotent: the id is the payload's, or the first 32 hex digits of the SHA-256 of the canonical
 * JSON of the records and format; the date is the job's creation time. A retry or rerun of the same
 * job writes the same key, and the manifest entry is replaced by id.
 */
import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import { canonicalJson } from '../queues/contract.js';
import { recordKey } from '../storage/keys.js';
import { upsertManifestEntry } from '../storage/manifest.js';
import { parquetStream } from '../storage/parquet.js';
import { uploadStream } from '../storage/upload.js';
import type { Processor } from './context.js';

export interface ExportResult {
  key: string;
  size: number;
  sha256: string;
  recordCount: number;
  format: 'json' | 'jsonl' | 'parquet';
  id: string;
  [field: string]: unknown;
}

/** The id of an export without an explicit one: a hash of its format and records. */
export function deriveExportId(format: string, records: unknown[]): string {
  return createHash('sha256').update(canonicalJson({ format, records })).digest('hex').slice(0, 32);
}

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
  const format = p.format;
  const id = p.id ?? deriveExportId(format, p.records);
  const createdAt = new Date(job.timestamp || Date.now());
  const key = recordKey(p.module, p.userId, createdAt, id, format);
  const log = ctx.logger.child({ key });
  const storage = ctx.storage();

  await ctx.progress({ stage: 'uploading', bytes: 0 });
  const uploaded = await uploadStream(storage, {
    key,
    body: format === 'parquet' ? parquetStream(p.records) : serialize(format, p.records),
    contentType: CONTENT_TYPES[format],
    metadata: { 'stowage-kind': 'records', 'stowage-module': p.module, 'stowage-records': String(p.records.length) },
    signal: ctx.signal,
    logger: log,
    metrics: ctx.metrics,
  });
  await ctx.progress({ stage: 'manifest', bytes: uploaded.size, totalBytes: uploaded.size });

  const update = await upsertManifestEntry(
    { storage, redis: () => ctx.redis, prefix: ctx.config.prefix, logger: log },
    p.module,
    p.userId,
    {
      id,
      key,
      format,
      record_count: p.records.length,
      size: uploaded.size,
      sha256: uploaded.sha256,
      created_at: createdAt.toISOString(),
    },
  );
  log.info({ size: uploaded.size, records: p.records.length, manifest: update }, 'records exported');

  await ctx.emit('export_completed', { module: p.module, userId: p.userId, key, records: p.records.length });
  const result: ExportResult = { key, size: uploaded.size, sha256: uploaded.sha256, recordCount: p.records.length, format, id };
  return result;
};
