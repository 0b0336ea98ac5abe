/**
 * Tests use the `export` kind as a stand-in job with a free-form body (its records). Its payload
 * is "records or blob"; this narrows it to records, the only form those tests enqueue.
 */
import type { ExportRecordsPayload, ExportResult, Payload } from '../../src/queues/index.js';

export function recordsJob(data: Payload<'export'>): ExportRecordsPayload & { records: Record<string, unknown>[] } {
  if (!('records' in data)) throw new Error('expected an export of records, got a JSON blob');
  return data as ExportRecordsPayload & { records: Record<string, unknown>[] };
}

/**
 * What a stand-in export processor returns: a records result for an object it never stored, whose
 * `id` carries what the test checks (e.g. `happy@1`), so stand-ins keep to the kind's result type.
 */
export function standInResult(id: string, fields: Partial<Omit<ExportResult, 'op' | 'id'>> = {}): ExportResult {
  return {
    op: 'records',
    id,
    key: `stand-in/${id}.json`,
    format: 'json',
    record_count: 1,
    size: 0,
    sha256: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
    created_at: '1970-01-01T00:00:00.000Z',
    ...fields,
  };
}
