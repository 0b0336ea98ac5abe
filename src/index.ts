/**
 * The package entry: what application services import.
 *
 *   import { createProducer } from 'stowage';
 */
export {
  createProducer,
  type Producer,
  type EnqueueOptions,
  type Enqueued,
  type StoreOptions,
  type StoreEnqueued,
} from './producers/index.js';
export {
  JOB_KINDS,
  DEAD_LETTER_QUEUE,
  createEventStream,
  type JobKind,
  type Payload,
  type PayloadInput,
  type Result,
  type JobProgress,
  type BuildArtifactPayload,
  type BuildArtifactResult,
  type AggregationPayload,
  type AggregationResult,
  type ExportPayload,
  type ExportRecordsPayload,
  type ExportResult,
  type JsonBlobResult,
  type BackupPayload,
  type BackupResult,
  type BackedUpDatabase,
  type CleanupPayload,
  type CleanupResult,
  type DomainEvent,
  type DomainEvents,
  type DomainEventType,
  type EventStream,
  type ParkedJob,
} from './queues/index.js';
export { loadConfig, type Config } from './config.js';
export {
  StowageError,
  PermanentError,
  ValidationError,
  ConfigError,
  JobParkedError,
  ERROR_CODES,
  type ErrorCode,
} from './errors.js';
export { createToken, verifyToken, type Principal, type Role } from './auth/tokens.js';

export type { ApplyOptions, ApplyResult } from './backups/restore.js';
/**
 * Call at start-up, before opening the databases in `dir`: applies a restore staged there by
 * `stowage backup restore` (safety copy, swap, quick_check, rollback on failure) and returns what
 * it did, or null when none is pending. Loaded on demand so the entry stays light.
 */
export async function applyPendingRestore(
  dir: string,
  options?: import('./backups/restore.js').ApplyOptions,
): Promise<import('./backups/restore.js').ApplyResult | null> {
  const { applyPendingRestore: apply } = await import('./backups/restore.js');
  return apply(dir, options);
}

export type { RecordReader } from './storage/records.js';
/**
 * The read side of record exports and JSON blobs for a service: get, list, search and presign its
 * users' records, read blobs. Loaded on demand (it brings the S3 SDK and the Parquet reader).
 * Call `close()` when done.
 */
export async function createRecordReader(
  config: Pick<import('./config.js').Config, 'storage'>,
): Promise<import('./storage/records.js').RecordReader> {
  const [{ createStorage }, { recordReader }] = await Promise.all([import('./storage/client.js'), import('./storage/records.js')]);
  return recordReader(createStorage(config));
}
