/**
 * The package entry: what application services import.
 *
 *   import { createProducer } from 'stowage';
 */
export { createProducer, type Producer, type EnqueueOptions, type Enqueued } from './producers/index.js';
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
  type ExportPayload,
  type BackupPayload,
  type CleanupPayload,
  type DomainEvent,
  type DomainEvents,
  type DomainEventType,
  type EventStream,
  type ParkedJob,
} from './queues/index.js';
export { loadConfig, type Config } from './config.js';
export { StowageError, PermanentError, ValidationError, ConfigError, ERROR_CODES, type ErrorCode } from './errors.js';
export { createToken, verifyToken, type Principal, type Role } from './auth/tokens.js';
