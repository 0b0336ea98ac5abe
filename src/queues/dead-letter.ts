/**
 * The dead-letter queue: where jobs that failed for good are parked, and from where they are
 * redriven into their origin queue.
 *
 * BullMQ has no dead-letter queue of its own. A job whose retries are spent (or whose error is
 * permanent, or which stalled too often) lands in its queue's *failed* set; that set stays the
 * source of truth until the job is parked: `park()` first adds the dead-letter job (its id is
 * derived from the origin, so parking twice is a no-op), and only then removes the failed job.
 * A crash between the two leaves the failed job, which the next sweep parks again, harmlessly.
 *
 * Parked jobs sit *waiting* in the `dead-letter` queue; no worker consumes it. They leave it by
 * redrive (by hand, or automatically on a slow schedule at most N times) or purge.
 *
 * Parked jobs are also grouped by cause (`groups()`): the error's name, code and message with ids
 * and numbers masked (the failure catalog's normalizer), so an operator sees "19 × S3 SlowDown"
 * rather than 19 lines, and can redrive or purge one cause at a time (`{ group: signature }`).
 */
import { createHash } from 'node:crypto';
import type { Job, JobsOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import { PERMANENT_ERROR_NAMES, StowageError, type ErrorData } from '../errors.js';
import { normalizeSignature } from '../failures/signature.js';
import { FOREIGN_ERROR_TEXT } from '../foreign-errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { correlationIdOf, DEAD_LETTER_QUEUE } from './contract.js';
import type { EventStream } from './event-stream.js';
import { createQueue, openQueueByName, type OpenQueueOptions, type QueueByName, type QueueConnection, type TypedQueue } from './factory.js';
import { parkedJobId, redisKeys } from './keys.js';
import { redactSecrets, redactString } from './redact.js';

/** The record a parked job carries in the dead-letter queue. */
export interface ParkedJob {
  originQueue: string;
  originJobId: string;
  name: string;
  payload: unknown;
  error: { message: string; name: string; stack?: string; code?: string };
  attemptsMade: number;
  /** The origin job's retry options and correlation id, reused when it is redriven. */
  opts: { attempts?: number; backoff?: unknown; priority?: number; correlationId?: string };
  /** Automatic redrives already spent on this job. */
  redrives: number;
  timestamps: { created: number; processed?: number; failed?: number; parked: number };
  /** Why it was parked: a permanent error, retries spent, or stalled too often. */
  reason: 'permanent' | 'retries_exhausted' | 'stalled';
}

/** The dead-letter queue. No worker runs a parked job, so it has no result. */
export type DeadLetterQueue = TypedQueue<ParkedJob, never>;

/** Open the dead-letter queue; with its job defaults (the default), what DeadLetter parks with. */
export function openDeadLetterQueue(at: QueueConnection, options: OpenQueueOptions = {}): DeadLetterQueue {
  // Parked jobs are removed by redrive or purge, never by age.
  const parking = { removeOnComplete: true, removeOnFail: false, attempts: 1 };
  return createQueue<ParkedJob, never>(DEAD_LETTER_QUEUE, at, options.jobDefaults === false ? undefined : parking);
}

export interface DeadLetterDeps {
  connection: Redis;
  prefix: string;
  logger: Logger;
  metrics?: Metrics;
  events?: EventStream;
  /** Called after a job is parked (the runtime writes a receipt). */
  onParked?: (record: ParkedJob) => Promise<void>;
}

export interface RedriveSelector {
  /** Dead-letter job ids or origin job ids. */
  ids?: string[];
  /** Origin queue. */
  queue?: string;
  /** A cause: the `signature` of a group from `groups()`. */
  group?: string;
  all?: boolean;
}

/** Parked jobs that failed the same way: same error name and code, same message once masked. */
export interface DeadLetterGroup {
  /** Stable id of the cause (derived from name, code and normalized message): what `{ group }` takes. */
  signature: string;
  errorName: string;
  errorCode: string | null;
  /** The message with ids, numbers and quoted values masked, secrets redacted. */
  message: string;
  /** The newest parked job's message as it was, secrets redacted. */
  example: string;
  /** Origin queues, sorted. */
  queues: string[];
  /** Why its jobs were parked, sorted. */
  reasons: ParkedJob['reason'][];
  count: number;
  /** ISO 8601. */
  firstParkedAt: string;
  lastParkedAt: string;
  /** Dead-letter job ids, oldest first; at most GROUP_JOB_IDS of them (`count` has the total). */
  jobIds: string[];
}

/** A parked job as it may be shown (CLI, HTTP): secrets redacted, with its dead-letter id and group. */
export type ShownParkedJob = ParkedJob & { id: string; signature: string };

/** Job ids listed per group; enough to look a few up, bounded for a queue of thousands. */
export const GROUP_JOB_IDS = 20;
/** What a group signature looks like: 12 hex digits. */
export const GROUP_SIGNATURE = /^[0-9a-f]{12}$/;

/** A parked error's cause: its signature and normalized, redacted message. */
export function causeOf(error: ParkedJob['error']): { signature: string; message: string } {
  // Redacted before masking: a URL's password must not reach the shown text nor split groups.
  const message = normalizeSignature(redactString(error.message));
  // 48 bits: collisions stay unlikely for any number of causes a dead-letter queue holds.
  const signature = createHash('sha256')
    .update(JSON.stringify([error.name, error.code ?? null, message]))
    .digest('hex')
    .slice(0, 12);
  return { signature, message };
}

/** A parked job for display: payload, error and stack with passwords and secret fields redacted. */
export function showParked(job: Job<ParkedJob>): ShownParkedJob {
  return { id: job.id!, signature: causeOf(job.data.error).signature, ...redactSecrets(job.data) };
}

/** Parked jobs grouped by cause, largest group first (then the most recent). */
export function groupParked(jobs: Job<ParkedJob>[]): DeadLetterGroup[] {
  const groups = new Map<string, { group: DeadLetterGroup; first: number; last: number }>();
  for (const job of jobs) {
    const r = job.data;
    const { signature, message } = causeOf(r.error);
    const at = r.timestamps.parked;
    let g = groups.get(signature);
    if (!g) {
      const group: DeadLetterGroup = {
        signature,
        errorName: r.error.name,
        errorCode: r.error.code ?? null,
        message,
        example: redactString(r.error.message),
        queues: [],
        reasons: [],
        count: 0,
        firstParkedAt: '',
        lastParkedAt: '',
        jobIds: [],
      };
      g = { group, first: at, last: at };
      groups.set(signature, g);
    }
    const { group } = g;
    group.count++;
    if (!group.queues.includes(r.originQueue)) group.queues.push(r.originQueue);
    if (!group.reasons.includes(r.reason)) group.reasons.push(r.reason);
    if (group.jobIds.length < GROUP_JOB_IDS) group.jobIds.push(job.id!);
    if (at < g.first) g.first = at;
    if (at >= g.last) {
      g.last = at;
      group.example = redactString(r.error.message);
    }
  }
  return [...groups.values()]
    .map(({ group, first, last }) => ({
      ...group,
      queues: group.queues.sort(),
      reasons: group.reasons.sort(),
      firstParkedAt: new Date(first).toISOString(),
      lastParkedAt: new Date(last).toISOString(),
    }))
    .sort((a, b) => b.count - a.count || b.lastParkedAt.localeCompare(a.lastParkedAt) || a.signature.localeCompare(b.signature));
}

export interface RedriveOutcome {
  id: string;
  originQueue: string;
  originJobId: string;
  action: 'redriven' | 'would_redrive' | 'skipped';
  reason?: string;
}

const PAGE = 500;
/** How long a job's automatic-redrive count is remembered (it expires on its own: no cleanup). */
const REDRIVE_MEMORY_SECONDS = 30 * 86_400;

export class DeadLetter {
  readonly queue: DeadLetterQueue;
  private readonly origins = new Map<string, QueueByName>();

  constructor(private readonly deps: DeadLetterDeps) {
    this.queue = openDeadLetterQueue(deps);
  }

  /** A parked job's origin queue, by name: its payload is `unknown` here; the worker validates it. */
  origin(name: string): QueueByName {
    let q = this.origins.get(name);
    if (!q) {
      q = openQueueByName(name, this.deps);
      this.origins.set(name, q);
    }
    return q;
  }

  /**
   * Park a job that is in its queue's failed set. Idempotent. Returns false when the job is not
   * (or no longer) failed, e.g. another process parked it first or it was retried.
   */
  async park(job: Job): Promise<boolean> {
    const queueName = job.queueName;
    const jobId = job.id;
    if (!jobId) return false;
    if ((await job.getState()) !== 'failed') return false;
    const id = parkedJobId(queueName, jobId);
    const redrives = Number((await this.deps.connection.get(redisKeys.redrives(this.deps.prefix, id))) ?? 0);
    // The error as data, written by the runtime next to BullMQ's failedReason; absent when BullMQ
    // itself failed the job (stalled too often) or an older worker did.
    const errorKey = redisKeys.jobError(this.deps.prefix, queueName, jobId);
    const stored = await this.deps.connection.get(errorKey);
    const data = stored ? (JSON.parse(stored) as Partial<ErrorData>) : {};
    const errorName = data.name ?? 'Error';
    const reason: ParkedJob['reason'] = FOREIGN_ERROR_TEXT.bullmqStalled.test(job.failedReason ?? '')
      ? 'stalled'
      : PERMANENT_ERROR_NAMES.has(errorName)
        ? 'permanent'
        : 'retries_exhausted';
    const correlationId = correlationIdOf(job);
    const record: ParkedJob = {
      originQueue: queueName,
      originJobId: jobId,
      name: job.name,
      payload: job.data,
      error: {
        message: job.failedReason ?? data.message ?? 'unknown error',
        name: errorName,
        ...(job.stacktrace?.length ? { stack: job.stacktrace[job.stacktrace.length - 1]! } : {}),
        ...(data.code ? { code: data.code } : {}),
      },
      attemptsMade: job.attemptsMade,
      opts: {
        ...(job.opts.attempts !== undefined ? { attempts: job.opts.attempts } : {}),
        ...(job.opts.backoff !== undefined ? { backoff: job.opts.backoff } : {}),
        ...(job.opts.priority ? { priority: job.opts.priority } : {}),
        ...(correlationId ? { correlationId } : {}),
      },
      redrives,
      timestamps: {
        created: job.timestamp,
        ...(job.processedOn ? { processed: job.processedOn } : {}),
        ...(job.finishedOn ? { failed: job.finishedOn } : {}),
        parked: Date.now(),
      },
      reason,
    };
    const existed = (await this.queue.getJobState(id)) !== 'unknown';
    await this.queue.add(job.name, record, { jobId: id });
    // Only now may the failed job go: the dead-letter queue holds everything it had.
    await job.remove().catch((err: unknown) => {
      this.deps.logger.warn(
        { queue: queueName, jobId, err },
        'parked job could not be removed from the failed set; the next sweep retries',
      );
    });
    await this.deps.connection.del(errorKey).catch(() => {});
    if (!existed) {
      this.deps.metrics?.jobsParked.inc({ queue: queueName, reason });
      this.deps.logger.warn(
        { queue: queueName, jobId, attempt: job.attemptsMade, reason, error: record.error.message },
        'job parked in dead-letter queue',
      );
      const userId = (job.data as { userId?: unknown } | undefined)?.userId;
      await this.deps.events
        ?.emit(
          'job_parked',
          {
            queue: queueName,
            jobId,
            name: job.name,
            reason: record.error.message,
            attempts: job.attemptsMade,
            ...(typeof userId === 'string' ? { userId } : {}),
          },
          { queue: queueName, jobId, correlationId },
        )
        .catch(() => {});
    }
    // Also when the dead-letter job already existed: a process that died between the add and this
    // call left the receipt unwritten, and the sweep that finishes the park writes it (an upsert).
    await this.deps.onParked?.(record);
    return true;
  }

  /** Park every job in the failed set of `queueName`. Returns how many were parked. */
  async sweep(queueName: string): Promise<number> {
    const q = this.origin(queueName);
    let parked = 0;
    // Parking removes jobs from the set, so always read the first page until it stops shrinking.
    for (let guard = 0; guard < 1000; guard++) {
      const jobs = (await q.getJobs(['failed'], 0, PAGE - 1)).filter(Boolean) as Job[];
      if (!jobs.length) break;
      let progressed = 0;
      for (const job of jobs) if (await this.park(job)) progressed++;
      parked += progressed;
      if (progressed === 0 || jobs.length < PAGE) break;
    }
    return parked;
  }

  /** Parked jobs, oldest first. */
  async list(filter: { queue?: string } = {}): Promise<Job<ParkedJob>[]> {
    const out: Job<ParkedJob>[] = [];
    for (let start = 0; ; start += PAGE) {
      const page = (await this.queue.getJobs(['waiting', 'delayed', 'prioritized'], start, start + PAGE - 1, true)).filter(Boolean);
      out.push(...page.filter((j) => !filter.queue || j.data.originQueue === filter.queue));
      if (page.length < PAGE) break;
    }
    return out;
  }

  /** Parked jobs grouped by cause (see DeadLetterGroup), largest group first. */
  async groups(filter: { queue?: string } = {}): Promise<DeadLetterGroup[]> {
    return groupParked(await this.list(filter));
  }

  private async select(selector: RedriveSelector): Promise<Job<ParkedJob>[]> {
    const chosen = [selector.ids?.length, selector.queue, selector.group, selector.all].filter(Boolean).length;
    if (chosen !== 1) throw new Error('choose exactly one of: ids, queue, group, all');
    if (selector.group && !GROUP_SIGNATURE.test(selector.group))
      throw new StowageError(
        'STOWAGE_ERR_USAGE',
        `group: expected a signature of 12 hex digits (as groups list it), got "${selector.group}"`,
      );
    const jobs = await this.list(selector.queue ? { queue: selector.queue } : {});
    if (selector.group) return jobs.filter((j) => causeOf(j.data.error).signature === selector.group);
    if (!selector.ids) return jobs;
    const wanted = new Set(selector.ids);
    return jobs.filter((j) => wanted.has(j.id!) || wanted.has(j.data.originJobId));
  }

  /** Send parked jobs back to their origin queue with their payload. */
  async redrive(selector: RedriveSelector, options: { dryRun?: boolean; automatic?: boolean } = {}): Promise<RedriveOutcome[]> {
    const outcomes: RedriveOutcome[] = [];
    for (const parked of await this.select(selector)) {
      outcomes.push(await this.redriveOne(parked, options));
    }
    return outcomes;
  }

  private async redriveOne(parked: Job<ParkedJob>, options: { dryRun?: boolean; automatic?: boolean }): Promise<RedriveOutcome> {
    const { originQueue, originJobId, name, payload } = parked.data;
    const base = { id: parked.id!, originQueue, originJobId };
    const origin = this.origin(originQueue);
    const state = await origin.getJobState(originJobId);
    // A job with the same id still in the origin queue would make the add a silent no-op.
    if (state !== 'unknown' && state !== 'failed') {
      return { ...base, action: 'skipped', reason: `a job with id ${originJobId} is ${state} in ${originQueue}` };
    }
    if (options.dryRun) return { ...base, action: 'would_redrive' };
    if (state === 'failed') await (await origin.getJob(originJobId))?.remove();
    await origin.add(name, payload, { ...(parked.data.opts as JobsOptions | undefined), jobId: originJobId });
    if (options.automatic) {
      const key = redisKeys.redrives(this.deps.prefix, parked.id!);
      await this.deps.connection.multi().incr(key).expire(key, REDRIVE_MEMORY_SECONDS).exec();
    }
    await parked.remove();
    const mode = options.automatic ? 'automatic' : 'manual';
    this.deps.metrics?.jobsRedriven.inc({ queue: originQueue, mode });
    this.deps.logger.info({ queue: originQueue, jobId: originJobId, mode }, 'parked job redriven');
    await this.deps.events
      ?.emit(
        'job_redriven',
        { queue: originQueue, jobId: originJobId, automatic: Boolean(options.automatic) },
        { queue: originQueue, jobId: originJobId, correlationId: parked.data.opts?.correlationId },
      )
      .catch(() => {});
    return { ...base, action: 'redriven' };
  }

  /**
   * The slow automatic retry: redrive parked jobs that have waited at least `intervalMs` and have
   * been redriven automatically fewer than `maxRetries` times. Permanent errors are not retried:
   * bad input stays bad.
   */
  async autoRedrive(intervalMs: number, maxRetries: number, now = Date.now()): Promise<RedriveOutcome[]> {
    const outcomes: RedriveOutcome[] = [];
    for (const parked of await this.list()) {
      const r = parked.data;
      if (r.reason === 'permanent' || r.redrives >= maxRetries || now - r.timestamps.parked < intervalMs) continue;
      outcomes.push(await this.redriveOne(parked, { automatic: true }));
    }
    return outcomes;
  }

  /** Remove parked jobs for good. */
  async purge(selector: RedriveSelector, options: { dryRun?: boolean } = {}): Promise<string[]> {
    const removed: string[] = [];
    for (const parked of await this.select(selector)) {
      if (!options.dryRun) {
        await parked.remove();
        await this.deps.connection.del(redisKeys.redrives(this.deps.prefix, parked.id!));
      }
      removed.push(parked.id!);
    }
    return removed;
  }

  async close(): Promise<void> {
    await Promise.all([this.queue.close(), ...[...this.origins.values()].map((q) => q.close())]);
  }
}
