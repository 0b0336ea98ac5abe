/**
 * aggregation: the `aggregate` task groups the last `days` of failures into candidate patterns and
 * stores them as one deterministic JSON export; the same queue's `retry-fallbacks` task (every 15
 * minutes) re-uploads exports the store could not take. Both are src/failures/aggregation.ts; the
 * job completes either way, a fallback being an outcome, not a job failure.
 */
import { retryFallbacks, runAggregation, type AggregationDeps, type RetryOutcome } from '../failures/aggregation.js';
import type { Processor } from './context.js';

export const aggregation: Processor<'aggregation'> = async (job, ctx) => {
  const p = job.data;
  const deps: AggregationDeps = {
    config: ctx.config,
    db: ctx.db,
    storage: ctx.storage,
    metrics: ctx.metrics,
    logger: ctx.logger,
    signal: ctx.signal,
  };
  if (p.task === 'retry-fallbacks') {
    const outcomes = await retryFallbacks(deps, { ...(p.max ? { max: p.max } : {}), ...(p.dryRun ? { dryRun: true } : {}) });
    const count = (s: RetryOutcome['status']) => outcomes.filter((o) => o.status === s).length;
    return {
      task: 'retry-fallbacks',
      considered: outcomes.length,
      uploaded: count('uploaded'),
      retrying: count('retrying'),
      failed: count('failed'),
    };
  }
  // When the job was due, which a retry keeps, so a retried job exports the same window under the
  // same key: a Job Scheduler's slot (e.g. 02:00:00), which BullMQ puts in the job id
  // (`repeat:<schedulerId>:<millis>`; the delay field is zeroed once the job is promoted), else the
  // enqueue time.
  const slot = job.repeatJobKey ? /:(\d{10,})$/.exec(job.id ?? '')?.[1] : undefined;
  const windowEnd = p.windowEnd ? new Date(p.windowEnd) : new Date(slot ? Number(slot) : job.timestamp);
  // The upload retries R2_MAX_RETRIES times inside the first attempt and then falls back locally,
  // so that attempt completes whatever the store does. A job that BullMQ retries failed on something
  // else (Postgres, the fallback write): one upload try, not another full round of them.
  const { summary } = await runAggregation(deps, {
    days: p.days,
    minOccurrences: p.minOccurrences,
    windowEnd,
    ...(p.dryRun ? { skipStore: true } : {}),
    ...(ctx.attempt > 1 ? { uploadRetries: 0 } : {}),
  });
  await ctx.emit('aggregation_completed', {
    key: summary.status === 'skipped' ? null : summary.key,
    patterns: summary.patterns,
    status: summary.status,
  });
  return { task: 'aggregate', ...summary };
};
