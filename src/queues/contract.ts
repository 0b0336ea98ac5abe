/**
 * The contract between producers and workers: queue names, payload/result types, default job
 * options and job ids. Both sides import this module; nothing here imports a processor.
 *
 * Glossary. A *kind* is a type of work (build-artifact, export, …) and has exactly one queue of the
 * same name. A *job* is one unit of that work, with a validated *payload*. A *worker* is a process
 * that runs processors for some kinds. A job that fails for good is *parked* in the dead-letter
 * queue, from which it can be *redriven* into its origin queue.
 */
import { createHash } from 'node:crypto';
import type { DefaultJobOptions } from 'bullmq';
import type { z } from 'zod';
import { ValidationError } from '../errors.js';
import {
  aggregationPayload,
  backupPayload,
  buildArtifactPayload,
  cleanupPayload,
  exportPayload,
  type AggregationResult,
  type BackupResult,
  type BuildArtifactResult,
  type CleanupResult,
  type ExportResult,
  type JsonBlobResult,
} from './payloads.js';

export const JOB_KINDS = ['build-artifact', 'aggregation', 'export', 'backup', 'cleanup'] as const;
export type JobKind = (typeof JOB_KINDS)[number];
export const DEAD_LETTER_QUEUE = 'dead-letter';
export const QUEUE_NAMES = [...JOB_KINDS, DEAD_LETTER_QUEUE] as const;

/** Every kind's payload schema (input type = what producers pass; output = what processors get). */
export const PAYLOAD_SCHEMAS = {
  'build-artifact': buildArtifactPayload,
  aggregation: aggregationPayload,
  export: exportPayload,
  backup: backupPayload,
  cleanup: cleanupPayload,
} as const satisfies Record<JobKind, z.ZodType>;

export type PayloadInput<K extends JobKind> = z.input<(typeof PAYLOAD_SCHEMAS)[K]>;
export type Payload<K extends JobKind> = z.output<(typeof PAYLOAD_SCHEMAS)[K]>;

/** What each kind's processor returns (and `stowage enqueue --wait` prints). */
export interface JobResults {
  'build-artifact': BuildArtifactResult;
  aggregation: AggregationResult;
  export: ExportResult | JsonBlobResult;
  backup: BackupResult;
  cleanup: CleanupResult;
}
export type Result<K extends JobKind> = JobResults[K];

/** Progress every processor reports: the stage it is in and bytes done out of the total if known. */
export interface JobProgress {
  stage: string;
  bytes: number;
  totalBytes?: number;
}

export function isJobKind(value: string): value is JobKind {
  return (JOB_KINDS as readonly string[]).includes(value);
}

/** Validate a payload for `kind`; throws ValidationError naming each bad field. */
export function parsePayload<K extends JobKind>(kind: K, data: unknown): Payload<K> {
  const result = PAYLOAD_SCHEMAS[kind].safeParse(data);
  if (!result.success) {
    throw ValidationError.fromZod(`${kind} payload`, result.error, '(payload)');
  }
  return result.data as Payload<K>;
}

const retrying = (attempts: number, delay: number): DefaultJobOptions => ({
  attempts,
  // Exponential backoff with jitter so a fleet that failed together does not retry together.
  backoff: { type: 'exponential', delay, jitter: 0.5 },
  // Bounded history: completed jobs are kept a day (this is also the dedupe window),
  // failed ones until they are parked (then removed) or a week at most.
  removeOnComplete: { age: 24 * 3600, count: 1000 },
  removeOnFail: { age: 7 * 24 * 3600, count: 5000 },
});

/**
 * Default job options per kind; callers may override per job. Retries span a store outage of
 * minutes before a job is parked: build-artifact waits 2–4 min over its 8 attempts, export 1–2 min,
 * aggregation 75–150 s (backoff doubles from `delay`; jitter takes up to half of each wait off).
 */
export const DEFAULT_JOB_OPTIONS: Record<JobKind, DefaultJobOptions> = {
  'build-artifact': retrying(8, 2000),
  aggregation: retrying(5, 5000),
  export: retrying(8, 1000),
  backup: retrying(3, 30_000),
  cleanup: retrying(3, 10_000),
};

/**
 * Fields whose values name one unit of work. Enqueueing the same unit twice yields the same job id,
 * so BullMQ keeps one job (while the first is waiting, active, or kept as completed).
 * `null` means the whole payload names it.
 */
const IDENTITY_FIELDS: Record<JobKind, string[] | null> = {
  'build-artifact': ['userId', 'projectId', 'versionId', 'fromVersionId'],
  aggregation: null,
  export: null,
  // The whole payload: ad hoc runs carry `requestedAt`, so each `backup now` is its own job.
  backup: null,
  cleanup: null,
};

/**
 * The correlation id a job gets when its producer gives none: a build's id for a build artifact
 * (seed 001's UI followed `/api/builds/:buildId/events`), else its version's. Other kinds get none.
 */
export function defaultCorrelationId<K extends JobKind>(kind: K, payload: Payload<K>): string | undefined {
  if (kind !== 'build-artifact') return undefined;
  const p = payload as Payload<'build-artifact'>;
  return p.buildId ?? p.versionId;
}

/**
 * A job's correlation id. It is kept in the job's options, beside the payload: it changes neither
 * what the job does nor its id (so two enqueues of one unit of work still dedupe).
 */
export function correlationIdOf(job: { opts?: unknown }): string | undefined {
  const id = (job.opts as { correlationId?: unknown } | undefined)?.correlationId;
  return typeof id === 'string' && id !== '' ? id : undefined;
}

/** Canonical JSON: object keys sorted, so equal payloads hash equally whatever their key order. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/**
 * The id of a records export without an explicit one: the first 32 hex digits of the SHA-256 of
 * the canonical JSON of its format and records (so equal exports share an id, hence a key).
 */
export function deriveExportId(format: string, records: unknown[]): string {
  return createHash('sha256').update(canonicalJson({ format, records })).digest('hex').slice(0, 32);
}

/** The job id for a validated payload: `<kind>.<sha256 of the identity fields, 32 hex>`. */
export function jobIdFor<K extends JobKind>(kind: K, payload: Payload<K>): string {
  const fields = IDENTITY_FIELDS[kind];
  const identity = fields ? Object.fromEntries(fields.map((f) => [f, (payload as Record<string, unknown>)[f]])) : payload;
  const digest = createHash('sha256').update(canonicalJson(identity)).digest('hex').slice(0, 32);
  return `${kind}.${digest}`;
}
