/**
 * Failure-catalog metrics, under the seeds' names. Registered once per registry (a second call
 * returns the same objects), and metrics that src/observability/metrics.ts already registers
 * (failure_persist_dropped_total, failure_agg_r2_upload_fallback_total) are reused, not doubled.
 *
 * error_code and category labels go through boundedLabel: at most MAX_ERROR_CODES distinct codes
 * and MAX_CATEGORIES categories per process, the rest counted as `OTHER`.
 */
import { Counter, Histogram, type Registry } from 'prom-client';
import { boundedLabel } from './signature.js';

export const MAX_ERROR_CODES = 100;
export const MAX_CATEGORIES = 30;
export const MAX_RECOVERY_MODES = 10;

export interface FailureMetrics {
  uploadAttempts: Counter<'status'>;
  uploadDuration: Histogram;
  uploadFallback: Counter;
  retrySuccess: Counter;
  uploadBytes: Counter;
  matchHits: Counter<'error_code' | 'category'>;
  matchMisses: Counter<'error_code'>;
  recoverySuccess: Counter<'recovery_mode' | 'error_code'>;
  recoveryFailure: Counter<'recovery_mode' | 'error_code'>;
  persistDropped: Counter;
  /** Label normalizers (bounded sets). */
  errorCodeLabel: (v: string | null | undefined) => string;
  categoryLabel: (v: string | null | undefined) => string;
  recoveryModeLabel: (v: string | null | undefined) => string;
}

const byRegistry = new WeakMap<Registry, FailureMetrics>();

export function failureMetrics(registry: Registry): FailureMetrics {
  const existing = byRegistry.get(registry);
  if (existing) return existing;
  const registers = [registry];
  const counter = <L extends string>(name: string, help: string, labelNames: L[] = []): Counter<L> =>
    (registry.getSingleMetric(name) as Counter<L> | undefined) ?? new Counter<L>({ name, help, labelNames, registers });
  const m: FailureMetrics = {
    uploadAttempts: counter('failure_agg_r2_upload_attempt_total', 'Aggregation export upload attempts by outcome', ['status']),
    uploadDuration:
      (registry.getSingleMetric('failure_agg_r2_upload_duration_seconds') as Histogram | undefined) ??
      new Histogram({
        name: 'failure_agg_r2_upload_duration_seconds',
        help: 'Duration of one aggregation export upload attempt',
        buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
        registers,
      }),
    uploadFallback: counter(
      'failure_agg_r2_upload_fallback_total',
      'Aggregation exports written to the local fallback directory because the store failed',
    ),
    retrySuccess: counter('failure_agg_r2_retry_success_total', 'Fallback exports uploaded by the retry worker'),
    uploadBytes: counter('failure_agg_r2_upload_bytes_total', 'Bytes of aggregation exports uploaded'),
    matchHits: counter('failure_match_hits_total', 'Reported failures that matched a catalog entry', ['error_code', 'category']),
    matchMisses: counter('failure_match_misses_total', 'Reported failures with no catalog entry', ['error_code']),
    recoverySuccess: counter('recovery_success_total', 'Recoveries reported as succeeded', ['recovery_mode', 'error_code']),
    recoveryFailure: counter('recovery_failure_total', 'Recoveries reported as failed', ['recovery_mode', 'error_code']),
    persistDropped: counter('failure_persist_dropped_total', 'Accepted failure records dropped without being persisted'),
    errorCodeLabel: boundedLabel(MAX_ERROR_CODES),
    categoryLabel: boundedLabel(MAX_CATEGORIES),
    recoveryModeLabel: boundedLabel(MAX_RECOVERY_MODES),
  };
  byRegistry.set(registry, m);
  return m;
}

/** Count one reported failure as a catalog hit or miss. */
export function countMatch(m: FailureMetrics, f: { errorCode: string; category: string | null; catalogEntry: string | null }): void {
  if (f.catalogEntry) m.matchHits.inc({ error_code: m.errorCodeLabel(f.errorCode), category: m.categoryLabel(f.category) });
  else m.matchMisses.inc({ error_code: m.errorCodeLabel(f.errorCode) });
}

/** Count one recovery outcome. */
export function countRecovery(m: FailureMetrics, f: { errorCode: string; recoveryMode: string | null; succeeded: boolean }): void {
  const labels = { recovery_mode: m.recoveryModeLabel(f.recoveryMode ?? 'manual'), error_code: m.errorCodeLabel(f.errorCode) };
  (f.succeeded ? m.recoverySuccess : m.recoveryFailure).inc(labels);
}
