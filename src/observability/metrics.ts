/**
 * Prometheus metrics. One registry per process (passed in, never global), so tests and several
 * runtimes in one process do not collide. Label values are bounded: queue names and statuses from
 * fixed sets only, never job ids or keys.
 */
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

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
}

export function createMetrics(options: { registry?: Registry; defaults?: boolean } = {}): Metrics {
  const registry = options.registry ?? new Registry();
  if (options.defaults !== false) collectDefaultMetrics({ register: registry, prefix: 'stowage_' });
  const registers = [registry];
  return {
    registry,
    jobsCompleted: new Counter({ name: 'stowage_jobs_completed_total', help: 'Jobs completed', labelNames: ['queue'], registers }),
    jobsFailed: new Counter({ name: 'stowage_jobs_failed_total', help: 'Job attempts that failed (retried or final)', labelNames: ['queue'], registers }),
    jobsRetried: new Counter({ name: 'stowage_jobs_retried_total', help: 'Failed attempts that will be retried', labelNames: ['queue'], registers }),
    jobsParked: new Counter({ name: 'stowage_jobs_parked_total', help: 'Jobs parked in the dead-letter queue', labelNames: ['queue', 'reason'], registers }),
    jobsRedriven: new Counter({ name: 'stowage_jobs_redriven_total', help: 'Parked jobs sent back to their queue', labelNames: ['queue', 'mode'], registers }),
    jobDuration: new Histogram({
      name: 'stowage_job_duration_seconds',
      help: 'Time a job attempt spent in its processor',
      labelNames: ['queue', 'status'],
      // 10 ms to 30 min.
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800],
      registers,
    }),
    uploadBytes: new Counter({ name: 'stowage_upload_bytes_total', help: 'Bytes uploaded to object storage', labelNames: ['status'], registers }),
    uploadDuration: new Histogram({
      name: 'stowage_upload_duration_seconds',
      help: 'Duration of one object upload',
      labelNames: ['status'],
      buckets: [0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800],
      registers,
    }),
    uploadAttempts: new Counter({ name: 'stowage_upload_attempts_total', help: 'Upload attempts by outcome', labelNames: ['status'], registers }),
  };
}
