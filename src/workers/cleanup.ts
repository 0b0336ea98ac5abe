/**
 * cleanup: delete what the payload's selectors pick (see src/storage/cleanup.ts for the rules:
 * scope, modes, sidecars, batches, multipart), then write one r2_cleanup_logs row and emit
 * `cleanup_completed`. The row is written for failed runs too, with the partial counts and the
 * error, before the error is rethrown (and the job retried). `stowage cleanup` runs the same
 * `runRecordedCleanup` (src/cleanup/recorded.ts).
 *
 * A store that does not implement ListMultipartUploads (s3rver) fails a run that asked for
 * `multipart` explicitly; under `enforceLifecycle` alone the abort rule is skipped and the row's
 * details say so, so the daily schedule does not fail every night on such a store.
 *
 * A run over the whole bucket (no `prefix`: the daily schedule is one) then measures what is left
 * and sets this process's usage gauges (src/storage/usage.ts): bytes per prefix, the estimated
 * monthly cost, the budget. The worker's /metrics (`--metrics-port`) serves them; the alert
 * StorageMonthlyBudgetExceeded reads them. A failed measurement is logged and does not fail the job:
 * the cleanup itself is done and recorded, and the gauges keep the previous measurement (its time
 * is exported beside it).
 */
import { runRecordedCleanup } from '../cleanup/recorded.js';
import { measureUsage, recordUsage } from '../storage/usage.js';
import type { Processor } from './context.js';

export const cleanup: Processor<'cleanup'> = async (job, ctx) => {
  const p = job.data;
  const log = ctx.logger.child({ dryRun: p.dryRun, prefix: p.prefix });
  const { report, logId } = await runRecordedCleanup({
    storage: ctx.storage(),
    db: ctx.db,
    config: ctx.config,
    options: p,
    queue: job.queueName ?? null,
    jobId: job.id ?? null,
    onProgress: (message) => log.debug(message),
    signal: ctx.signal,
    onRecordError: (err) => log.error({ err }, 'recording the failed cleanup run failed'),
  });
  if (report.unsupported.length) {
    log.warn({ unsupported: report.unsupported }, 'the store does not implement these; that part of the cleanup was skipped');
  }
  const summary = {
    mode: report.modes.join('+'),
    scanned: report.scanned,
    deleted: report.deleted,
    bytesFreed: report.bytesFreed,
    dryRun: report.dryRun,
  };
  await ctx.emit('cleanup_completed', summary);
  log.info({ ...summary, errors: report.errors, stragglers: report.stragglers, logId }, 'cleanup finished');
  if (!p.prefix) {
    try {
      const usage = await measureUsage(ctx.storage(), ctx.config.usage, { signal: ctx.signal, onProgress: (m) => log.debug(m) });
      recordUsage(ctx.metrics.registry, usage);
      log.info(
        { objects: usage.objects, bytes: usage.bytes, estimatedMonthlyUsd: usage.cost.totalUsd, budgetUsd: usage.budgetUsd },
        usage.overBudget ? 'storage usage measured: the estimated monthly cost is over the budget' : 'storage usage measured',
      );
    } catch (err) {
      log.warn({ err }, 'measuring storage usage after the cleanup failed; the usage gauges keep the previous measurement');
    }
  }
  return {
    ...summary,
    logId,
    errors: report.errors,
    stragglers: report.stragglers,
    perMode: report.perMode,
    unsupported: report.unsupported,
    ...(report.modes.includes('artifact-retention')
      ? {
          artifacts: {
            kept: report.artifacts.filter((v) => v.action === 'keep').length,
            deleted: report.artifacts.filter((v) => v.action === 'delete').length,
          },
        }
      : {}),
    // Bounded: the full list belongs in a dry run's CLI output, not in Redis.
    sample: report.objects.slice(0, 100).map((o) => o.key),
  };
};
