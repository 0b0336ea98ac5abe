/**
 * Prometheus metrics. One registry per process (passed in, never global), so tests and several
 * runtimes in one process do not collide. Label values are bounded: queue names and statuses from
 * fixed sets only, never job ids or keys.
 */
import type { Queue } from 'bullmq';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface Metrics {
  registry: Registry;
  jobsCompleted: Counter<'queue'>;
  jobsFailed: Counter<'queue'>;
  jobsRetried: Counter<'queue'>;
  jobsParked: Counter<'queue' | 'reason'>;
  jobsRedriven: Counter<'queue' | 'mode'>;
  jobDuration: Histogram<'queue' | 'status'>;
  uploadBytes: Counter<'status'>;
  uploadDuration: Histogram<'status'>;
  uploadAttempts: Counter<'status'>;
  /** Seed name (failure catalog): accepted failure records that could not be persisted at all. */
  failurePersistDropped: Counter;
  /** Seed name (failure catalog): aggregation exports written to the local fallback instead of the store. */
  failureAggUploadFallback: Counter;
}

export function createMetrics(options: { registry?: Registry; defaults?: boolean } = {}): Metrics {
  const registry = options.registry ?? new Registry();
  if (options.defaults !== false) {
    collectDefaultMetrics({ register: registry, prefix: 'stowage_' });
    // prom-client names these gauges `*_total`, a suffix Prometheus reserves for counters, so
    // `promtool check metrics` rejects them. The per-type gauges without the suffix remain;
    // sum() over them is the same number.
    for (const name of ['handles', 'requests', 'resources']) registry.removeSingleMetric(`stowage_nodejs_active_${name}_total`);
  }
  const registers = [registry];
  return {
    registry,
    jobsCompleted: new Counter({ name: 'stowage_jobs_completed_total', help: 'Jobs completed', labelNames: ['queue'], registers }),
    jobsFailed: new Counter({
      name: 'stowage_jobs_failed_total',
      help: 'Job attempts that failed (retried or final)',
      labelNames: ['queue'],
      registers,
    }),
    jobsRetried: new Counter({
      name: 'stowage_jobs_retried_total',
      help: 'Failed attempts that will be retried',
      labelNames: ['queue'],
      registers,
    }),
    jobsParked: new Counter({
      name: 'stowage_jobs_parked_total',
      help: 'Jobs parked in the dead-letter queue',
      labelNames: ['queue', 'reason'],
      registers,
    }),
    jobsRedriven: new Counter({
      name: 'stowage_jobs_redriven_total',
      help: 'Parked jobs sent back to their queue',
      labelNames: ['queue', 'mode'],
      registers,
    }),
    jobDuration: new Histogram({
      name: 'stowage_job_duration_seconds',
      help: 'Time a job attempt spent in its processor',
      labelNames: ['queue', 'status'],
      // 10 ms to 30 min.
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800],
      registers,
    }),
    uploadBytes: new Counter({
      name: 'stowage_upload_bytes_total',
      help: 'Bytes uploaded to object storage',
      labelNames: ['status'],
      registers,
    }),
    uploadDuration: new Histogram({
      name: 'stowage_upload_duration_seconds',
      help: 'Duration of one object upload',
      labelNames: ['status'],
      buckets: [0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800],
      registers,
    }),
    uploadAttempts: new Counter({
      name: 'stowage_upload_attempts_total',
      help: 'Upload attempts by outcome',
      labelNames: ['status'],
      registers,
    }),
    // No labels, so every process exports 0 from the start: the alerts see a flat line, not a gap.
    failurePersistDropped: new Counter({
      name: 'failure_persist_dropped_total',
      help: 'Accepted failure records dropped without being persisted',
      registers,
    }),
    failureAggUploadFallback: new Counter({
      name: 'failure_agg_r2_upload_fallback_total',
      help: 'Aggregation exports written to the local fallback directory because the store failed',
      registers,
    }),
  };
}

/** Job states exported as queue depth. `prioritized` is separate from `waiting` in BullMQ. */
export const QUEUE_DEPTH_STATES = ['waiting', 'prioritized', 'active', 'delayed', 'failed'] as const;

export interface QueueMetricsOptions {
  /** Bound on each queue's reads; a queue that does not answer in time is reported down. Default 2000. */
  timeoutMs?: number;
  /** Clock, for the age gauge. */
  now?: () => number;
}

/**
 * Queue gauges read from Redis at scrape time, rendered as Prometheus text.
 *
 * They live in a registry made per scrape rather than in `Metrics`: concurrent scrapes then never
 * see each other's half-set values, and a queue that cannot be read has no samples (absent, not
 * stale). Redis work per scrape is bounded: per queue one getJobCounts, one peek at the oldest
 * waiting job and one at the newest completed job (an id, then its hash, each), and one CLIENT LIST
 * for the worker count; all queues in parallel, each queue within `timeoutMs`.
 */
export async function renderQueueMetrics(queues: readonly Queue[], options: QueueMetricsOptions = {}): Promise<string> {
  const timeoutMs = options.timeoutMs ?? 2000;
  const now = options.now ?? Date.now;
  const registry = new Registry();
  const registers = [registry];
  const jobs = new Gauge({
    name: 'stowage_queue_jobs',
    help: 'Jobs in a queue by state, read at scrape time',
    labelNames: ['queue', 'state'] as const,
    registers,
  });
  const oldest = new Gauge({
    name: 'stowage_queue_oldest_waiting_age_seconds',
    help: 'Age of the oldest job in the wait list (0 when empty); excludes prioritized jobs',
    labelNames: ['queue'] as const,
    registers,
  });
  const workers = new Gauge({
    name: 'stowage_queue_workers',
    help: 'Workers connected to Redis for a queue (BullMQ client names in CLIENT LIST)',
    labelNames: ['queue'] as const,
    registers,
  });
  const lastCompleted = new Gauge({
    name: 'stowage_queue_last_completed_timestamp_seconds',
    help: "Unix time the newest job in the queue's completed set finished; absent when the set is empty",
    labelNames: ['queue'] as const,
    registers,
  });
  const up = new Gauge({
    name: 'stowage_queue_metrics_up',
    help: 'Whether the queue could be read from Redis during this scrape (1) or not (0)',
    labelNames: ['queue'] as const,
    registers,
  });
  await Promise.all(
    queues.map(async (queue) => {
      try {
        const [counts, peek, newest] = await withTimeout(
          Promise.all([
            queue.getJobCounts(...QUEUE_DEPTH_STATES),
            queue.getJobs(['wait'], 0, 0, true),
            // The completed set is scored by finish time; BullMQ trims it only when another job
            // completes, so the newest entry survives however long the queue stays idle.
            queue.getJobs(['completed'], 0, 0, false),
          ]),
          timeoutMs,
        );
        for (const state of QUEUE_DEPTH_STATES) jobs.set({ queue: queue.name, state }, counts[state] ?? 0);
        const job = peek[0];
        // A delayed job only starts waiting once its delay is over.
        const since = job ? job.timestamp + (job.delay ?? 0) : now();
        oldest.set({ queue: queue.name }, Math.max(0, (now() - since) / 1000));
        const finishedOn = newest[0]?.finishedOn;
        if (finishedOn) lastCompleted.set({ queue: queue.name }, finishedOn / 1000);
        up.set({ queue: queue.name }, 1);
      } catch {
        up.set({ queue: queue.name }, 0);
      }
      // Apart from the rest: CLIENT LIST may be forbidden (ACLs, some managed Redis) while the
      // queue itself is readable; the worker gauge is then absent and depth is still reported.
      try {
        const clients = await withTimeout(queue.getWorkers(), timeoutMs);
        // Where CLIENT LIST is not supported BullMQ answers with one placeholder entry, no address.
        if (clients.every((c) => c.addr)) workers.set({ queue: queue.name }, clients.length);
      } catch {
        // Absent: "unknown", never a false 0 that would page as "no live worker".
      }
    }),
  );
  return registry.metrics();
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
