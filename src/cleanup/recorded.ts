/**
 * A cleanup run with its record: the store-side deletion (src/storage/cleanup.ts, which knows no
 * tables), artifact retention (which reads and marks project_versions), then one r2_cleanup_logs row, written for failed runs too, with the partial counts
 * and the error, before the error is rethrown. The cleanup processor and `stowage cleanup` run it.
 */
import type { Config } from '../config.js';
import { existingProjectVersions, insertCleanupLog } from '../db/cleanup-logs.js';
import type { Db } from '../db/pool.js';
import { StowageError } from '../errors.js';
import { cleanupModes, emptyReport, runCleanup, type CleanupOptions, type CleanupReport } from '../storage/cleanup.js';
import { runArtifactRetention } from './artifact-retention.js';
import type { Storage } from '../storage/client.js';

export interface RecordedCleanup {
  storage: Storage;
  db: Db;
  config: Pick<Config, 'lifecycleRules'> & { artifact: Pick<Config['artifact'], 'retention'> };
  options: CleanupOptions;
  /** Origin of the run, for the log row: the job's queue and id; null for the CLI. */
  queue?: string | null;
  jobId?: string | null;
  onProgress?: (message: string) => void;
  signal?: AbortSignal;
  /** The clock (tests). */
  now?: number;
  /** Called when recording a failed run failed too (the run's error is the one rethrown). */
  onRecordError?: (err: unknown) => void;
}

/** Run a cleanup and write its r2_cleanup_logs row (also when it fails). Returns the report and row id. */
export async function runRecordedCleanup(r: RecordedCleanup): Promise<{ report: CleanupReport; logId: number }> {
  const o = r.options;
  const modes = cleanupModes(o);
  const report = emptyReport(o, modes);
  const startedAt = new Date();
  let failure: unknown;
  try {
    await runCleanup(
      {
        storage: r.storage,
        rules: r.config.lifecycleRules,
        versionsExist: (versions) => existingProjectVersions(r.db.pool, versions),
        ...(r.onProgress ? { onProgress: r.onProgress } : {}),
        ...(r.signal ? { signal: r.signal } : {}),
        ...(r.now !== undefined ? { now: r.now } : {}),
      },
      o,
      report,
    );
    if (modes.includes('artifact-retention')) {
      await runArtifactRetention({
        db: r.db,
        storage: r.storage,
        policy: r.config.artifact.retention,
        dryRun: o.dryRun,
        prefix: o.prefix,
        report,
        ...(r.now !== undefined ? { now: r.now } : {}),
        ...(r.signal ? { signal: r.signal } : {}),
        ...(r.onProgress ? { onProgress: r.onProgress } : {}),
      });
    }
  } catch (err) {
    failure = err;
    if (!report.errors) report.errors = 1;
    report.errorMessages.push((err as Error).message);
  }

  let logId = 0;
  try {
    logId = await insertCleanupLog(r.db.pool, {
      startedAt,
      finishedAt: new Date(),
      mode: modes.join('+'),
      scanned: report.scanned,
      deleted: report.deleted,
      bytesFreed: report.bytesFreed,
      errors: report.errors,
      dryRun: o.dryRun,
      bucket: r.storage.bucket,
      prefix: o.prefix || null,
      queue: r.queue ?? null,
      jobId: r.jobId ?? null,
      details: {
        perMode: report.perMode,
        stragglers: report.stragglers,
        unsupported: report.unsupported,
        errorMessages: report.errorMessages,
        ...(o.olderThanDays !== undefined ? { olderThanDays: o.olderThanDays } : {}),
        ...(o.olderThanHours !== undefined ? { olderThanHours: o.olderThanHours } : {}),
        ...(o.testOnly ? { testOnly: true } : {}),
        ...(modes.includes('artifact-retention')
          ? {
              artifactRetention: {
                policy: r.config.artifact.retention,
                kept: report.artifacts.filter((a) => a.action === 'keep').length,
                deleted: report.artifacts.filter((a) => a.action === 'delete').length,
              },
            }
          : {}),
      },
    });
  } catch (err) {
    if (failure) r.onRecordError?.(err);
    else
      throw new StowageError('STOWAGE_ERR_INTERNAL', `recording the cleanup run in r2_cleanup_logs failed: ${(err as Error).message}`, {
        cause: err,
      });
  }
  if (failure) throw failure;
  return { report, logId };
}
