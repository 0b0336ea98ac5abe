/**
 * The worker runtime: the only place that creates BullMQ Workers.
 *
 * For each chosen kind it runs a Worker whose processor validates the payload, builds the
 * processor's context, runs it, and writes the receipt. A failed attempt's error is kept as data
 * ({name, code, message} under redisKeys.jobError, beside the failedReason BullMQ keeps as its
 * plain message), so parking knows its kind without parsing text; permanent ones are not
 * retried. Final failures are parked in the
 * dead-letter queue as soon as the `failed` event fires, and a periodic sweep parks any the event
 * missed (a worker that died mid-park, a job failed by the stalled checker, an undefined job).
 *
 * Lock and stall timing (config.worker): a job's lock lasts `lockDurationMs` (30 s) and is renewed
 * every half of that while the processor runs; every worker checks for stalled jobs each
 * `stalledIntervalMs` (15 s). So a SIGKILLed worker's job is picked up by another within about
 * lockDuration + stalledInterval (≈45 s by default), and fails after `maxStalledCount` (2) stalls,
 * which protects the fleet from a job that kills every worker that touches it.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Config } from '../config.js';
import type { Db } from '../db/pool.js';
import { createReceiptWriter } from '../db/job-receipts.js';
import { errorData, isPermanent, PermanentError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import {
  correlationIdOf,
  createEventStream,
  createRedis,
  isConnectionError,
  parsePayload,
  type DomainEvents,
  type DomainEventType,
  type EventStream,
  type JobKind,
  type JobProgress,
  MAINTENANCE_QUEUE,
} from '../queues/index.js';
import { DeadLetter } from '../queues/dead-letter.js';
import { queuePrefix, redisKeys } from '../queues/keys.js';
import { createStorage, type Storage } from '../storage/client.js';
import type { Processor, ProcessorContext } from './context.js';

export type ProcessorMap = { [K in JobKind]?: Processor<K> };

export interface RuntimeOptions {
  config: Config;
  logger: Logger;
  metrics: Metrics;
  db: Db;
  /** Kinds to run; each needs a processor. */
  kinds: readonly JobKind[];
  processors: ProcessorMap;
  /** Jobs in flight per kind (default config.worker.concurrency). */
  concurrency?: Partial<Record<JobKind, number>>;
  /** Storage factory; default createStorage(config), created on first use. */
  storage?: () => Storage;
  /** Identifies this process in logs and in Redis CLIENT LIST. */
  workerId?: string;
  /** Also run the maintenance queue (dead-letter auto-redrive). Default true. */
  maintenance?: boolean;
}

export interface Runtime {
  workerId: string;
  workers: Worker[];
  deadLetter: DeadLetter;
  events: EventStream;
  /** Park every final failure of this runtime's queues now. */
  sweep(): Promise<number>;
  /**
   * Stop fetching, let active jobs finish for up to `timeoutMs` (default config.worker.shutdownTimeoutMs),
   * then abort the rest (their locks expire and other workers pick them up) and close connections.
   */
  close(timeoutMs?: number): Promise<void>;
}

const PROGRESS_INTERVAL_MS = 250;
/** As long as BullMQ keeps a failed job (removeOnFail, queues/contract.ts): a week. */
const JOB_ERROR_TTL_SECONDS = 7 * 24 * 3600;
/** How long close() waits for buffered job receipts. */
const RECEIPT_FLUSH_BOUND_MS = 5_000;
/** How long parking waits for the parked job's receipt before moving on (it is written later). */
const PARKED_RECEIPT_WAIT_MS = 2_000;

/** What every job's context shares: made once per runtime. */
interface SharedContext {
  config: Config;
  logger: Logger;
  db: Db;
  redis: Redis;
  storage: () => Storage;
  metrics: Metrics;
  signal: AbortSignal;
  events: EventStream;
  workerId: string;
}

/**
 * One job's context. A class, not an object literal: its methods and the logger getter live on
 * the prototype, so a no-op job allocates one object rather than an object with an accessor and a
 * closure per method (bench/queue-overhead.ts counts the CPU per job against raw BullMQ).
 */
class JobContext implements ProcessorContext {
  readonly config: Config;
  readonly db: Db;
  readonly redis: Redis;
  readonly storage: () => Storage;
  readonly metrics: Metrics;
  readonly signal: AbortSignal;
  #child: Logger | undefined;
  #lastProgress = 0;
  #lastStage = '';

  constructor(
    private readonly shared: SharedContext,
    private readonly kind: JobKind,
    private readonly job: Job,
    readonly attempt: number,
  ) {
    this.config = shared.config;
    this.db = shared.db;
    this.redis = shared.redis;
    this.storage = shared.storage;
    this.metrics = shared.metrics;
    this.signal = shared.signal;
  }

  /** Made on first use: a pino child costs more than a no-op job. */
  get logger(): Logger {
    this.#child ??= this.shared.logger.child({
      queue: this.kind,
      jobId: this.job.id,
      attempt: this.attempt,
      workerId: this.shared.workerId,
    });
    return this.#child;
  }

  async emit<T extends DomainEventType>(type: T, data: DomainEvents[T]): Promise<void> {
    await this.shared.events.emit(type, data, { queue: this.kind, jobId: this.job.id!, correlationId: correlationIdOf(this.job) });
  }

  async progress(p: JobProgress): Promise<void> {
    const now = Date.now();
    // Throttled: a stage change or the final byte always goes out, the rest at most 4/s.
    const final = p.totalBytes !== undefined && p.bytes >= p.totalBytes;
    if (p.stage === this.#lastStage && !final && now - this.#lastProgress < PROGRESS_INTERVAL_MS) return;
    this.#lastProgress = now;
    this.#lastStage = p.stage;
    await this.job.updateProgress({ ...p });
  }
}

export async function startRuntime(options: RuntimeOptions): Promise<Runtime> {
  const { config, logger, metrics, db } = options;
  const workerId = options.workerId ?? `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  const missing = options.kinds.filter((k) => !options.processors[k]);
  if (missing.length) throw new PermanentError(`no processor for kind(s): ${missing.join(', ')}`, { code: 'STOWAGE_ERR_USAGE' });

  // One connection for Stowage's own commands; each Worker duplicates it for its blocking reads.
  const connection: Redis = createRedis(config, { connectionName: `stowage:${workerId}`, log: logger });
  const events = createEventStream(connection, config.prefix, config.events.maxLen);
  // Receipts wait through a Postgres outage (the writer retries with backoff); warn once per outage.
  let receiptsWaiting = false;
  const receipts = createReceiptWriter(db, {
    onRetry: (err, pending, retryInMs) => {
      if (receiptsWaiting) return;
      receiptsWaiting = true;
      logger.warn(
        { err: { message: (err as Error).message, code: (err as { code?: unknown }).code }, pending, retryInMs },
        'job receipts waiting for Postgres',
      );
    },
  });
  const receiptWritten = () => {
    if (receiptsWaiting && receipts.pending === 0) {
      receiptsWaiting = false;
      logger.info('job receipts written again');
    }
  };
  const deadLetter = new DeadLetter({
    connection,
    prefix: config.prefix,
    logger,
    metrics,
    events,
    // Awaited for a bounded time only: while Postgres is away the receipt waits in the writer,
    // and parking (and the sweep behind it) must not wait with it.
    onParked: async (record) => {
      const written = receipts
        .write({
          queue: record.originQueue,
          jobId: record.originJobId,
          name: record.name,
          status: 'parked',
          attempts: record.attemptsMade,
          result: null,
          error: record.error.message,
        })
        .then(receiptWritten, (err: unknown) =>
          logger.warn({ err, queue: record.originQueue, jobId: record.originJobId }, 'parked receipt not written'),
        );
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([written, new Promise<void>((resolve) => (timer = setTimeout(resolve, PARKED_RECEIPT_WAIT_MS)))]);
      clearTimeout(timer);
    },
  });

  let storage: Storage | undefined;
  const getStorage = () => (storage ??= (options.storage ?? (() => createStorage(config)))());
  const shutdown = new AbortController();
  const shared: SharedContext = {
    config,
    logger,
    db,
    redis: connection,
    storage: getStorage,
    metrics,
    signal: shutdown.signal,
    events,
    workerId,
  };
  const infoEnabled = logger.isLevelEnabled('info');
  const debugEnabled = logger.isLevelEnabled('debug');

  const workers: Worker[] = [];
  for (const kind of options.kinds) {
    const processor = options.processors[kind] as Processor<JobKind>;
    // Label children bound once: prom-client hashes labels on every unbound call.
    const durationCompleted = metrics.jobDuration.labels(kind, 'completed');
    const durationFailed = metrics.jobDuration.labels(kind, 'failed');
    const run = async (job: Job) => {
      const attempt = job.attemptsMade + 1;
      const ctx = new JobContext(shared, kind, job, attempt);
      const started = performance.now();
      try {
        job.data = parsePayload(kind, job.data);
        if (debugEnabled) ctx.logger.debug('job started');
        const result = await processor(job, ctx);
        if (config.worker.jobReceipts === 'all') {
          // Written behind, batched: the receipts that matter (uploads, project versions) are
          // written by processors inside the job; this audit row must not add a Postgres round
          // trip to every job's latency.
          receipts
            .write({ queue: kind, jobId: job.id!, name: job.name, status: 'completed', attempts: attempt, result, error: null })
            .then(receiptWritten, (err: unknown) => ctx.logger.warn({ err }, 'job receipt not written'));
        }
        // An earlier attempt's error is moot now.
        if (job.attemptsMade > 0) void connection.del(redisKeys.jobError(config.prefix, kind, job.id!)).catch(() => {});
        const seconds = (performance.now() - started) / 1000;
        durationCompleted.observe(seconds);
        if (infoEnabled) ctx.logger.info({ durationMs: Math.round(seconds * 1000) }, 'job completed');
        return result;
      } catch (raw) {
        durationFailed.observe((performance.now() - started) / 1000);
        const err = raw instanceof Error ? raw : new Error(String(raw));
        const permanent = isPermanent(err);
        ctx.logger.warn(
          { err: { name: err.name, message: err.message, code: (err as { code?: unknown }).code }, permanent },
          'job attempt failed',
        );
        // Before BullMQ records the failure: parking (on its `failed` event) reads this.
        await connection
          .set(redisKeys.jobError(config.prefix, kind, job.id!), JSON.stringify(errorData(err)), 'EX', JOB_ERROR_TTL_SECONDS)
          .catch((e: unknown) =>
            ctx.logger.warn({ err: e }, 'the error of this attempt was not recorded; it will be parked as a plain Error'),
          );
        if (permanent) {
          // BullMQ's way to skip the remaining attempts; the message stays the error's own.
          const u = new UnrecoverableError(err.message);
          if (err.stack) u.stack = err.stack;
          throw u;
        }
        throw err;
      }
    };

    const worker = new Worker(kind, run, {
      connection: connection.duplicate({ connectionName: `stowage:${workerId}:${kind}` }),
      prefix: queuePrefix(config.prefix, kind, connection.isCluster),
      concurrency: options.concurrency?.[kind] ?? config.worker.concurrency,
      lockDuration: config.worker.lockDurationMs,
      stalledInterval: config.worker.stalledIntervalMs,
      maxStalledCount: config.worker.maxStalledCount,
      name: workerId,
      autorun: true,
    });
    const completed = metrics.jobsCompleted.labels(kind);
    worker.on('completed', (job, result) => {
      completed.inc();
      // A correlated job's completion goes on the domain stream too, after BullMQ has recorded it,
      // so one filtered stream (GET /v1/events?correlationId=) follows its jobs to the end. One
      // XADD per such job; jobs without a correlation id add nothing.
      const correlationId = correlationIdOf(job);
      if (!correlationId) return;
      const userId = (job.data as { userId?: unknown } | undefined)?.userId;
      void events
        .emit(
          'job_completed',
          { queue: kind, jobId: job.id!, name: job.name, result: result ?? null, ...(typeof userId === 'string' ? { userId } : {}) },
          { queue: kind, jobId: job.id!, correlationId },
        )
        .catch((err: unknown) => logger.warn({ err, queue: kind, jobId: job.id }, 'job_completed event not written'));
    });
    worker.on('failed', (job, err) => {
      metrics.jobsFailed.inc({ queue: kind });
      if (!job) {
        // BullMQ may report a failure without the job (stalled-limit, a removed job): the sweep finds it.
        void deadLetter.sweep(kind).catch((e: unknown) => logger.warn({ err: e, queue: kind }, 'sweep failed'));
        return;
      }
      void (async () => {
        const state = await job.getState();
        if (state === 'failed') await deadLetter.park(job);
        else metrics.jobsRetried.inc({ queue: kind });
      })().catch((e: unknown) =>
        logger.warn({ err: e, queue: kind, jobId: job.id, error: err.message }, 'park failed; the sweep will retry'),
      );
    });
    worker.on('error', (err) => isConnectionError(err) || logger.error({ err, queue: kind }, 'worker error'));
    worker.on('stalled', (jobId) => logger.warn({ queue: kind, jobId }, 'job stalled: its worker stopped renewing the lock'));
    workers.push(worker);
  }

  if (options.maintenance !== false) {
    const worker = new Worker(
      MAINTENANCE_QUEUE,
      async (job: Job) => {
        if (job.name !== 'dlq-auto-redrive') throw new UnrecoverableError(`unknown maintenance job ${job.name}`);
        const outcomes = await deadLetter.autoRedrive(config.deadLetter.retryIntervalMs, config.deadLetter.maxRetries);
        return {
          redriven: outcomes.filter((o) => o.action === 'redriven').length,
          skipped: outcomes.filter((o) => o.action === 'skipped').length,
        };
      },
      {
        connection: connection.duplicate(),
        prefix: queuePrefix(config.prefix, MAINTENANCE_QUEUE, connection.isCluster),
        concurrency: 1,
        name: workerId,
      },
    );
    worker.on('error', (err) => isConnectionError(err) || logger.error({ err, queue: MAINTENANCE_QUEUE }, 'worker error'));
    workers.push(worker);
  }

  const sweep = async () => {
    let parked = 0;
    for (const kind of options.kinds) parked += await deadLetter.sweep(kind);
    return parked;
  };
  const sweeper = setInterval(() => {
    void sweep().catch((err: unknown) => logger.warn({ err }, 'sweep failed'));
  }, config.worker.sweepIntervalMs);
  sweeper.unref();
  await Promise.all(workers.map((w) => w.waitUntilReady()));
  // Failures left by a previous run (or missed events) are parked at start.
  void sweep().catch((err: unknown) => logger.warn({ err }, 'initial sweep failed'));
  logger.info({ workerId, kinds: options.kinds }, 'workers started');

  let closing: Promise<void> | undefined;
  return {
    workerId,
    workers,
    deadLetter,
    events,
    sweep,
    close(timeoutMs = config.worker.shutdownTimeoutMs) {
      closing ??= (async () => {
        clearInterval(sweeper);
        logger.info({ workerId, timeoutMs }, 'draining: no new jobs; waiting for active jobs');
        const graceful = Promise.all(workers.map((w) => w.close()));
        let timer: NodeJS.Timeout | undefined;
        const expired = new Promise<'timeout'>((resolve) => {
          timer = setTimeout(() => resolve('timeout'), timeoutMs);
        });
        const outcome = await Promise.race([graceful.then(() => 'drained' as const), expired]);
        clearTimeout(timer);
        if (outcome === 'timeout') {
          logger.warn({ workerId }, 'drain bound reached: aborting active jobs; their locks expire and other workers retry them');
          shutdown.abort(new Error('worker shutting down'));
          await Promise.all(workers.map((w) => w.close(true)));
        }
        // Bounded: with Postgres away the receipts cannot be written, and shutdown must not hang.
        const unwritten = await receipts.flush(RECEIPT_FLUSH_BOUND_MS);
        if (unwritten) logger.error({ unwritten }, 'job receipts not written: Postgres unreachable at shutdown');
        await deadLetter.close();
        storage?.close();
        await connection.quit().catch(() => connection.disconnect());
        logger.info({ workerId, outcome }, 'workers closed');
      })();
      return closing;
    },
  };
}
