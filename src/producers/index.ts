/**
 * What application services import: one typed enqueue function per job kind.
 *
 *   const stowage = createProducer({ redisUrl, prefix });
 *   const { jobId } = await stowage.buildArtifact({ userId, projectId, versionId, buildDir });
 *   const stored = await stowage.storeRecords({ module, userId, format: 'jsonl', records }, { wait: true });
 *   await stowage.close();
 *
 * A bad payload throws ValidationError naming each bad field, before anything reaches Redis.
 */
import { createHash, randomBytes } from 'node:crypto';
import { QueueEvents, type Job, type JobsOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Config } from '../config.js';
import { JobParkedError, StowageError, ValidationError } from '../errors.js';
import { FOREIGN_ERROR_TEXT } from '../foreign-errors.js';
import {
  JOB_KINDS,
  canonicalJson,
  createProducerRedis,
  defaultCorrelationId,
  deriveExportId,
  jobIdFor,
  lastStreamId,
  openDeadLetterQueue,
  openQueue,
  parkedJobId,
  parsePayload,
  payloadSourcePaths,
  type DeadLetterQueue,
  type JobKind,
  type ExportRecordsPayload,
  type ExportResult,
  type JsonBlobResult,
  type KindQueue,
  type ParkedJob,
  type PayloadInput,
  type Result,
} from '../queues/index.js';
import { sleep } from '../retry.js';
import { jobId as jobIdSchema, safeId as correlationIdSchema } from '../ids.js';
import { sourceRootProblem } from '../storage/source-roots.js';

export interface EnqueueOptions {
  /** Override the derived job id (dedupe key). */
  jobId?: string;
  /** Delay in ms before the job may run. */
  delay?: number;
  priority?: number;
  attempts?: number;
  /** Base delay of the exponential backoff between attempts, in ms. */
  backoffMs?: number;
  /**
   * Groups jobs for one follower (a build, a request): every domain event the job emits carries it,
   * the job emits `job_completed` when it completes, and `GET /v1/events?correlationId=` streams
   * them. A safe id (letters, digits, `_ . -`; no `/`, no `..`). Default: a build artifact's
   * `buildId`, else its `versionId`; none for other kinds. Not part of the job id: an enqueue that
   * finds the same work already enqueued leaves that job's correlation id as it was.
   */
  correlationId?: string;
}

export interface Enqueued {
  jobId: string;
  kind: JobKind;
  /** The correlation id given (or defaulted) for this enqueue, if any. */
  correlationId?: string;
  /** False when a job with the same id already existed (the work was already enqueued). */
  created: boolean;
}

/** Options of storeRecords / storeJsonBlob: enqueue options, and whether to wait for the result. */
export interface StoreOptions extends EnqueueOptions {
  /** Wait until the object is stored and return its result (throws if the job fails or is parked). */
  wait?: boolean;
  /** With wait: give up waiting after this long (the job keeps going). Default 10 minutes. */
  timeoutMs?: number;
}

/** What storeRecords answers without `wait`: the job, and the id the object will have. */
export interface StoreEnqueued extends Enqueued {
  id: string;
}

export interface Producer {
  /**
   * Store records as one JSON, JSONL or Parquet object under `records/{module}/{userId}/YYYY/MM/DD/{id}.{ext}`
   * and list it in the manifest. With `{wait: true}` the ExportResult, else the enqueued job and id.
   */
  storeRecords(input: Omit<ExportRecordsPayload, 'op'>, options: StoreOptions & { wait: true }): Promise<ExportResult>;
  storeRecords(input: Omit<ExportRecordsPayload, 'op'>, options?: StoreOptions & { wait?: false }): Promise<StoreEnqueued>;
  /**
   * Store one JSON value under `json_blobs/{key}.json` (a later write replaces it). Every call is a
   * write of its own (its job id is unique), so storing A, then B, then A again ends with A.
   */
  storeJsonBlob(key: string, value: unknown, options: StoreOptions & { wait: true }): Promise<JsonBlobResult>;
  storeJsonBlob(key: string, value: unknown, options?: StoreOptions & { wait?: false }): Promise<Enqueued>;

  enqueue<K extends JobKind>(kind: K, payload: PayloadInput<K>, options?: EnqueueOptions): Promise<Enqueued>;
  buildArtifact(payload: PayloadInput<'build-artifact'>, options?: EnqueueOptions): Promise<Enqueued>;
  aggregation(payload: PayloadInput<'aggregation'>, options?: EnqueueOptions): Promise<Enqueued>;
  export(payload: PayloadInput<'export'>, options?: EnqueueOptions): Promise<Enqueued>;
  backup(payload: PayloadInput<'backup'>, options?: EnqueueOptions): Promise<Enqueued>;
  cleanup(payload: PayloadInput<'cleanup'>, options?: EnqueueOptions): Promise<Enqueued>;
  /**
   * Wait until the job completes (its result) or ends failed (throws StowageError STOWAGE_ERR_JOB_FAILED)
   * or parked (throws JobParkedError: reason, attemptsMade, deadLetterId, the error).
   */
  waitFor<K extends JobKind>(kind: K, jobId: string, timeoutMs?: number): Promise<Result<K>>;
  /** The queue for a kind (read-only uses: counts, getJob). */
  queue<K extends JobKind>(kind: K): KindQueue<K>;
  /** The dead-letter queue (read-only uses: counts, the parked jobs and why they failed). */
  deadLetterQueue(): DeadLetterQueue;
  close(): Promise<void>;
}

/**
 * `sourceRoots`: refuse, before Redis, a payload path (buildDir, packPath, an ad hoc SQLite path)
 * outside these folders, by its text. Left out (an application's `{redisUrl, prefix}`), nothing is
 * checked here: the producer's host need not know the workers' roots, and every worker checks
 * again with links resolved whatever the producer did.
 */
export function createProducer(
  config: Pick<Config, 'redisUrl' | 'prefix'> & Partial<Pick<Config, 'sourceRoots' | 'redisClusterNodes'>>,
  options: { connection?: Redis } = {},
): Producer {
  const connection = options.connection ?? createProducerRedis(config);
  const at = { connection, prefix: config.prefix };
  const opened: { close(): Promise<void> }[] = [];
  // One opener per kind, each typed by its kind (a map of queues written by a generic kind is not).
  const lazyQueue = <K extends JobKind>(kind: K) => {
    let q: KindQueue<K> | undefined;
    return (): KindQueue<K> => {
      if (!q) {
        q = openQueue(kind, at);
        opened.push(q);
      }
      return q;
    };
  };
  const queues: { [K in JobKind]: () => KindQueue<K> } = {
    'build-artifact': lazyQueue('build-artifact'),
    aggregation: lazyQueue('aggregation'),
    export: lazyQueue('export'),
    backup: lazyQueue('backup'),
    cleanup: lazyQueue('cleanup'),
  };
  const queue = <K extends JobKind>(kind: K): KindQueue<K> => queues[kind]();
  const queueEvents = new Map<JobKind, QueueEvents>();
  // BullMQ does not close a connection it was handed: these are ours to quit (else the process
  // cannot exit after close()).
  const eventConnections: Redis[] = [];
  let dlq: DeadLetterQueue | undefined;
  const deadLetter = () => (dlq ??= openDeadLetterQueue(at));

  const enqueue = async <K extends JobKind>(kind: K, payload: PayloadInput<K>, opts: EnqueueOptions = {}): Promise<Enqueued> => {
    if (!(JOB_KINDS as readonly string[]).includes(kind)) {
      throw new StowageError('STOWAGE_ERR_UNKNOWN_KIND', `unknown job kind "${kind}"; expected one of ${JOB_KINDS.join(', ')}`);
    }
    const data = parsePayload(kind, payload);
    const roots = config.sourceRoots;
    if (roots) {
      const issues = payloadSourcePaths(kind, data).flatMap(({ field, path }) => {
        const problem = sourceRootProblem(path, roots);
        return problem ? [`${field}: ${problem}`] : [];
      });
      if (issues.length) throw new ValidationError(`${kind} payload`, issues);
    }
    if (opts.jobId !== undefined) {
      // A chosen id that names one of BullMQ's own keys would read or overwrite that key, not a job.
      const checked = jobIdSchema.safeParse(opts.jobId);
      if (!checked.success)
        throw new ValidationError(
          `${kind} job id`,
          checked.error.issues.map((i) => `jobId: ${i.message}`),
        );
    }
    if (opts.correlationId !== undefined) {
      const checked = correlationIdSchema.safeParse(opts.correlationId);
      if (!checked.success)
        throw new ValidationError(
          `${kind} correlation id`,
          checked.error.issues.map((i) => `correlationId: ${i.message}`),
        );
    }
    const correlationId = opts.correlationId ?? defaultCorrelationId(kind, data);
    const jobId = opts.jobId ?? jobIdFor(kind, data);
    // BullMQ keeps options it does not know with the job: correlationIdOf reads it back.
    const jobOpts: JobsOptions & { correlationId?: string } = { jobId, ...(correlationId ? { correlationId } : {}) };
    if (opts.delay !== undefined) jobOpts.delay = opts.delay;
    if (opts.priority !== undefined) jobOpts.priority = opts.priority;
    if (opts.attempts !== undefined) jobOpts.attempts = opts.attempts;
    if (opts.backoffMs !== undefined) jobOpts.backoff = { type: 'exponential', delay: opts.backoffMs, jitter: 0.5 };
    const q = queue(kind);
    // BullMQ ignores an add whose id exists and does not say so; ask first. The answer is
    // informational (a race can only make it say `true` for a job that was deduplicated).
    const existed = (await q.getJobState(jobId)) !== 'unknown';
    const job = await q.add(kind, data, jobOpts);
    return { jobId: job.id ?? jobId, kind, created: !existed, ...(correlationId ? { correlationId } : {}) };
  };

  /** How long waitFor looks for the dead-letter copy of a job that just failed for good. */
  const PARK_GRACE_MS = 3_000;

  const waitFor = async <K extends JobKind>(kind: K, jobId: string, timeoutMs = 10 * 60_000): Promise<Result<K>> => {
    let qe = queueEvents.get(kind);
    if (!qe) {
      const blocking = connection.duplicate({ maxRetriesPerRequest: null });
      eventConnections.push(blocking);
      // From the stream's end as it is now, not '$': a job finishing before the reader's first
      // XREAD is still heard (enqueue --wait hung for such a job under CI load).
      const q = queue(kind);
      const lastEventId = await lastStreamId(connection, q.keys.events!);
      qe = new QueueEvents(kind, { connection: blocking, prefix: q.opts.prefix ?? config.prefix, lastEventId });
      queueEvents.set(kind, qe);
      await qe.waitUntilReady();
    }
    // A job that failed for good is parked and removed from its queue, possibly before we
    // look: the dead-letter queue then has the answer.
    const parked = async (cause?: unknown): Promise<JobParkedError | undefined> => {
      const dead = (await deadLetter().getJob(parkedJobId(kind, jobId))) as Job<ParkedJob> | undefined;
      return dead?.data?.originJobId === jobId ? parkedError(dead, cause) : undefined;
    };
    const job = await queue(kind).getJob(jobId);
    if (!job) {
      const p = await parked();
      if (p) throw p;
      throw new StowageError('STOWAGE_ERR_NOT_FOUND', `job ${jobId} not found in queue ${kind}`);
    }
    try {
      return await job.waitUntilFinished(qe, timeoutMs);
    } catch (err) {
      // waitUntilFinished rejects on a final failure, which the worker parks right after the
      // `failed` event we just saw: give the park a moment to land so the answer says "parked".
      let p: JobParkedError | undefined;
      const until = Date.now() + PARK_GRACE_MS;
      for (;;) {
        p = await parked(err).catch(() => undefined);
        if (p || Date.now() >= until || (err instanceof Error && FOREIGN_ERROR_TEXT.bullmqWaitTimedOut.test(err.message))) break;
        await sleep(50);
      }
      if (p) throw p;
      throw new StowageError('STOWAGE_ERR_JOB_FAILED', `job ${jobId} failed: ${(err as Error).message}`, { cause: err });
    }
  };

  const split = ({ wait, timeoutMs, ...enqueueOptions }: StoreOptions = {}) => ({ wait, timeoutMs, enqueueOptions });

  async function storeRecords(input: Omit<ExportRecordsPayload, 'op'>, options?: StoreOptions): Promise<ExportResult | StoreEnqueued> {
    const { wait, timeoutMs, enqueueOptions } = split(options);
    const enqueued = await enqueue('export', input, enqueueOptions);
    // Validated by enqueue, so records is an array here.
    const id = input.id ?? deriveExportId(input.format, input.records);
    if (!wait) return { ...enqueued, id };
    return (await waitFor('export', enqueued.jobId, timeoutMs)) as ExportResult;
  }

  async function storeJsonBlob(key: string, value: unknown, options?: StoreOptions): Promise<JsonBlobResult | Enqueued> {
    const { wait, timeoutMs, enqueueOptions } = split(options);
    // The payload-derived id would make a repeat of an earlier value within the dedupe window a
    // no-op even after another value replaced it; a unique id per call keeps "last write wins".
    const digest = createHash('sha256').update(canonicalJson({ key, value })).digest('hex').slice(0, 16);
    const jobId = enqueueOptions.jobId ?? `export.blob.${digest}.${Date.now()}${randomBytes(4).toString('hex')}`;
    // enqueue validates the value as JSON (and its size) before anything reaches Redis.
    const enqueued = await enqueue('export', { op: 'blob', key, value } as PayloadInput<'export'>, { ...enqueueOptions, jobId });
    if (!wait) return enqueued;
    return (await waitFor('export', enqueued.jobId, timeoutMs)) as JsonBlobResult;
  }

  return {
    enqueue,
    storeRecords: storeRecords as Producer['storeRecords'],
    storeJsonBlob: storeJsonBlob as Producer['storeJsonBlob'],
    buildArtifact: (p, o) => enqueue('build-artifact', p, o),
    aggregation: (p, o) => enqueue('aggregation', p, o),
    export: (p, o) => enqueue('export', p, o),
    backup: (p, o) => enqueue('backup', p, o),
    cleanup: (p, o) => enqueue('cleanup', p, o),
    queue,
    deadLetterQueue: deadLetter,
    waitFor,
    async close() {
      await Promise.all([...queueEvents.values()].map((qe) => qe.close()));
      await Promise.all(eventConnections.map((c) => c.quit().catch(() => c.disconnect())));
      await Promise.all([...opened, ...(dlq ? [dlq] : [])].map((q) => q.close()));
      if (!options.connection) await connection.quit().catch(() => connection.disconnect());
    },
  };
}

/** The error waitFor throws for a parked job: why, after how many attempts, and its dead-letter id. */
function parkedError(dead: Job<ParkedJob>, cause?: unknown): JobParkedError {
  const r = dead.data;
  return new JobParkedError(
    {
      queue: r.originQueue,
      jobId: r.originJobId,
      reason: r.reason,
      attemptsMade: r.attemptsMade,
      deadLetterId: dead.id ?? parkedJobId(r.originQueue, r.originJobId),
      parkedAt: new Date(r.timestamps.parked).toISOString(),
      error: { name: r.error.name, ...(r.error.code ? { code: r.error.code } : {}), message: r.error.message },
    },
    cause === undefined ? undefined : { cause },
  );
}
