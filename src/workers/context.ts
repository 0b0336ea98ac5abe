/**
 * What a processor gets besides its job. Built by the runtime and passed in: a processor reaches
 * for no global, so each one is testable against real services with its own prefix, schema, bucket.
 * `emit` and `progress` are methods of the runtime's context object: call them on it
 * (`ctx.progress(p)`); give a callback `(p) => ctx.progress(p)`, not `ctx.progress`.
 */
import type { Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Config } from '../config.js';
import type { Db } from '../db/pool.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { DomainEvents, DomainEventType, JobKind, JobProgress, Payload, Result } from '../queues/index.js';
import type { Storage } from '../storage/client.js';

export interface ProcessorContext {
  config: Config;
  /** A child logger carrying queue, jobId and attempt. */
  logger: Logger;
  db: Db;
  /** The runtime's Redis connection (locks, counters). Shared: never close it. */
  redis: Redis;
  /** Lazily created: a kind that never touches the store needs no storage config. */
  storage(): Storage;
  metrics: Metrics;
  /** Emit a domain event tagged with this job's queue and id. */
  emit<T extends DomainEventType>(type: T, data: DomainEvents[T]): Promise<void>;
  /** Report progress: `{stage, bytes, totalBytes}`. Throttled; cheap to call often. */
  progress(progress: JobProgress): Promise<void>;
  /** Aborted when the worker is shutting down past its drain bound. */
  signal: AbortSignal;
  /** 1 for the first attempt. */
  attempt: number;
}

export type Processor<K extends JobKind> = (job: Job<Payload<K>, Result<K>, string>, ctx: ProcessorContext) => Promise<Result<K>>;
