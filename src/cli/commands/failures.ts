/**
 * `stowage aggregate` and `stowage retry-fallbacks`: the failure-pattern export and its fallback
 * retry, run now in this process with this process's configuration (no worker, no queue), like the
 * seed's `python -m app.jobs.failure_aggregation`. The same code the `aggregation` jobs run.
 */
import type { Command } from 'commander';
import { loadConfig } from '../../config.js';
import { createDb } from '../../db/pool.js';
import { StowageError } from '../../errors.js';
import { retryFallbacks, runAggregation, type AggregationDeps } from '../../failures/aggregation.js';
import { createLogger } from '../../observability/logger.js';
import { createMetrics } from '../../observability/metrics.js';
import { createStorage, type Storage } from '../../storage/client.js';
import { formatBytes } from '../format.js';

function positive(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < 1)
      throw new StowageError('STOWAGE_ERR_USAGE', `${name}: expected a positive integer, got "${value}"`);
    return n;
  };
}

async function withDeps<T>(fn: (deps: AggregationDeps) => Promise<T>): Promise<T> {
  const config = loadConfig();
  // Logs go to stderr so that stdout holds only the summary or the JSON.
  const logger = createLogger({ level: config.logLevel === 'info' ? 'warn' : config.logLevel }, process.stderr);
  const db = createDb(config, { max: 2 });
  let storage: Storage | undefined;
  try {
    return await fn({
      config,
      db,
      logger,
      metrics: createMetrics({ defaults: false }),
      storage: () => (storage ??= createStorage(config)),
    });
  } finally {
    storage?.close();
    await db.close();
  }
}

export function registerFailureCommands(program: Command): void {
  program
    .command('aggregate')
    .description('aggregate recent failures into candidate patterns and store the export now (in this process)')
    .option('--days <n>', 'window length in days, ending now', positive('--days'), 7)
    .option('--min-occurrences <n>', 'keep patterns seen at least this often', positive('--min-occurrences'), 3)
    .option('--json', 'print the export itself instead of a summary')
    .option('--skip-r2', 'build the export only: no upload, no fallback file, no audit row')
    .action(async (opts: { days: number; minOccurrences: number; json?: boolean; skipR2?: boolean }) => {
      if (opts.days > 366) throw new StowageError('STOWAGE_ERR_USAGE', '--days: at most 366');
      await withDeps(async (deps) => {
        const { summary, doc } = await runAggregation(deps, {
          days: opts.days,
          minOccurrences: opts.minOccurrences,
          windowEnd: new Date(),
          ...(opts.skipR2 ? { skipStore: true } : {}),
        });
        if (opts.json) {
          console.log(JSON.stringify(doc, null, 2));
          return;
        }
        console.log(
          `${summary.patterns} pattern(s) over ${summary.window.days} day(s), at least ${summary.window.min_occurrences} occurrence(s) each`,
        );
        console.log(`status: ${summary.status}${summary.attempts ? ` after ${summary.attempts} attempt(s)` : ''}`);
        console.log(`key: ${summary.key}`);
        console.log(`sha256: ${summary.sha256} (${formatBytes(summary.size)})`);
        if (summary.localPath) console.log(`local file: ${summary.localPath}`);
      });
    });

  program
    .command('retry-fallbacks')
    .description('re-upload aggregation exports left in the local fallback directory, oldest first (in this process)')
    .option('--dry-run', 'list what would be retried')
    .option('--max <n>', 'at most this many files', positive('--max'), 100)
    .action(async (opts: { dryRun?: boolean; max: number }) => {
      await withDeps(async (deps) => {
        const outcomes = await retryFallbacks(deps, { max: opts.max, ...(opts.dryRun ? { dryRun: true } : {}) });
        if (!outcomes.length) console.log('no fallback files to retry');
        for (const o of outcomes) console.log(`${o.status} ${o.key} (${o.localPath}): ${o.notes}`);
        if (outcomes.some((o) => o.status === 'failed' || o.status === 'retrying')) process.exitCode = 1;
      });
    });
}
