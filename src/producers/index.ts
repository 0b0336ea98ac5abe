/**
 * What application services import: one typed enqueue function per job kind.
 *
 *   const stowage = createProducer({ redisUrl, prefix });
 *   const { jobId } = await stowage.buildArtifact({ userId, projectId, versionId, buildDir });
 *   await stowage.close();
 *
 * A bad payload throws ValidationError naming each bad field, before anything reaches Redis.
 */
import { Queue, QueueEvents, type JobsOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Config } from '../config.js';
import { StowageError } from '../errors.js';
import {
  DEAD_LETTER_QUEUE,
  DEFAULT_JOB_OPTIONS,
  JOB_KINDS,
  createProducerRedis,
  jobIdFor,
  parkedJobId,
  parsePayload,
  type JobKind,
  type ParkedJob,
  type PayloadInput,
  type Result,
} from '../queues/index.js';

export interface EnqueueOptions {
  /** Override the derived job id (dedupe key). */
  jobId?: string;
  /** Delay in ms before the job may run. */
  delay?: number;
  priority?: number;
  attempts?: number;
  /** Base delay of the exponential backoff between attempts, in ms. */
  backoffMs?: number;
}

export interface Enqueued {
  jobId: string;
  kind: JobKind;
  /** False when a job with the same id already existed (the work was already enqueued). */
  created: boolean;
}

export interface Producer {
  enqueue<K extends JobKind>(kind: K, payload: PayloadInput<K>, options?: EnqueueOptions): Promise<Enqueued>;
  buildArtifact(payload: PayloadInput<'build-artifact'>, options?: EnqueueOptions): Promise<Enqueued>;
  aggregation(payload: PayloadInput<'aggregation'>, options?: EnqueueOptions): Promise<Enqueued>;
  export(payload: PayloadInput<'export'>, options?: EnqueueOptions): Promise<Enqueued>;
  backup(payload: PayloadInput<'backup'>, options?: EnqueueOptions): Promise<Enqueued>;
  cleanup(payload: PayloadInput<'cleanup'>, options?: EnqueueOptions): Promise<Enqueued>;
  /** Wait until the job completes (its result) or ends failed/parked (throws). */
  waitFor<K extends JobKind>(kind: K, jobId: string, timeoutMs?: number): Promise<Result<K>>;
  /** The queue for a kind (read-only uses: counts, getJob). */
  queue(kind: JobKind): Queue;
  close(): Promise<void>;
}

export function createProducer(config: Pick<Config, 'redisUrl' | 'prefix'>, options: { connection?: Redis } = {}): Producer {
  const connection = options.connection ?? createProducerRedis(config.redisUrl);
  const queues = new Map<JobKind, Queue>();
  const queueEvents = new Map<JobKind, QueueEvents>();
  let dlq: Queue<ParkedJob> | undefined;
  const deadLetter = () => (dlq ??= new Queue<ParkedJob>(DEAD_LETTER_QUEUE, { connection, prefix: config.prefix }));
  const queue = (kind: JobKind): Queue => {
    let q = queues.get(kind);
    if (!q) {
      q = new Queue(kind, { connection, prefix: config.prefix, defaultJobOptions: DEFAULT_JOB_OPTIONS[kind] });
      queues.set(kind, q);
    }
    return q;
  };

  const enqueue = async <K extends JobKind>(kind: K, payload: PayloadInput<K>, opts: EnqueueOptions = {}): Promise<Enqueued> => {
    if (!(JOB_KINDS as readonly string[]).includes(kind)) {
      throw new StowageError('STOWAGE_ERR_UNKNOWN_KIND', `unknown job kind "${kind}"; expected one of ${JOB_KINDS.join(', ')}`);
    }
    const data = parsePayload(kind, payload);
    const jobId = opts.jobId ?? jobIdFor(kind, data);
    const jobOpts: JobsOptions = { jobId };
    if (opts.delay !== undefined) jobOpts.delay = opts.delay;
    if (opts.priority !== undefined) jobOpts.priority = opts.priority;
    if (opts.attempts !== undefined) jobOpts.attempts = opts.attempts;
    if (opts.backoffMs !== undefined) jobOpts.backoff = { type: 'exponential', delay: opts.backoffMs, jitter: 0.5 };
    const q = queue(kind);
    // BullMQ ignores an add whose id exists and does not say so; ask first. The answer is
    // informational (a race can only make it say `true` for a job that was deduplicated).
    const existed = (await q.getJobState(jobId)) !== 'unknown';
    const job = await q.add(kind, data, jobOpts);
    return { jobId: job.id ?? jobId, kind, created: !existed };
  };

  return {
    enqueue,
    buildArtifact: (p, o) => enqueue('build-artifact', p, o),
    aggregation: (p, o) => enqueue('aggregation', p, o),
    export: (p, o) => enqueue('export', p, o),
    backup: (p, o) => enqueue('backup', p, o),
    cleanup: (p, o) => enqueue('cleanup', p, o),
    queue,
    async waitFor(kind, jobId, timeoutMs = 10 * 60_000) {
      let qe = queueEvents.get(kind);
      if (!qe) {
        qe = new QueueEvents(kind, { connection: connection.duplicate({ maxRetriesPerRequest: null }), prefix: config.prefix });
        queueEvents.set(kind, qe);
        await qe.waitUntilReady();
      }
      // A job that failed for good is parked and removed from its queue, possibly before we
      // look: the dead-letter queue then has the answer.
      const parked = async (): Promise<ParkedJob | undefined> => (await deadLetter().getJob(parkedJobId(kind, jobId)))?.data;
      const job = await queue(kind).getJob(jobId);
      if (!job) {
        const p = await parked();
        if (p) throw new StowageError('STOWAGE_ERR_JOB_FAILED', `job ${jobId} was parked in the dead-letter queue (${p.reason}): ${p.error.message}`);
        throw new StowageError('STOWAGE_ERR_NOT_FOUND', `job ${jobId} not found in queue ${kind}`);
      }
      try {
        return (await job.waitUntilFinished(qe, timeoutMs)) as Result<typeof kind>;
      } catch (err) {
        const p = await parked().catch(() => undefined);
        const why = p ? `was parked in the dead-letter queue (${p.reason}): ${p.error.message}` : `failed: ${(err as Error).message}`;
        throw new StowageError('STOWAGE_ERR_JOB_FAILED', `job ${jobId} ${why}`, { cause: err });
      }
    },
    async close() {
      await Promise.all([...queueEvents.values()].map((qe) => qe.close()));
      await Promise.all([...queues.values(), ...(dlq ? [dlq] : [])].map((q) => q.close()));
      if (!options.connection) await connection.quit().catch(() => connection.disconnect());
    },
  };
}
