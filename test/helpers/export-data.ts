/**
 * Tests use the `export` kind as a stand-in job with a free-form body (its records). Its payload
 * is "records or blob"; this narrows it to records, the only form those tests enqueue.
 */
import type { ExportRecordsPayload, Payload } from '../../src/queues/index.js';

export function recordsJob(data: Payload<'export'>): ExportRecordsPayload & { records: Record<string, unknown>[] } {
  if (!('records' in data)) throw new Error('expected an export of records, got a JSON blob');
  return data as ExportRecordsPayload & { records: Record<string, unknown>[] };
}
