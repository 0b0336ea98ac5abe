/**
 * Failure aggregation: group the last `days` of failures into candidate patterns and store them as
 * one deterministic JSON export (`runAggregation`); and re-upload exports the store could not take
 * (`retryFallbacks`). The aggregation processor (src/workers/aggregation.ts: the `aggregate` and
 * `retry-fallbacks` tasks) and `stowage aggregate` / `stowage retry-fallbacks` run these.
 *
 * The export: failures in [windowEnd - days, windowEnd) grouped by error code and normalized
 * signature (src/failures/signature.ts), those with at least `minOccurrences`, with count, tenants,
 * first/last seen and up to SAMPLES sample messages. The JSON is canonical (keys sorted, patterns
 * in a fixed order), so the same window yields the same bytes and the same SHA-256. The processor's
 * windowEnd defaults to the time the job was due (its schedule slot), which a retry of the job keeps.
 *
 * Storing it: `{R2_UPLOAD_PREFIX}/YYYY/MM/DD/candidates_{YYYYMMDDTHHMMSSZ}_{sha12}.json`, uploaded
 * with R2_MAX_RETRIES retries and exponential backoff; HEAD verifies the size (uploadStream) and a
 * `.sha256` sidecar is written. If every attempt fails the file goes to AGG_LOCAL_FALLBACK and the
 * audit row says `fallback_local`. These retries own the upload: a job BullMQ retries makes one
 * try (runAggregation's uploadRetries; docs/failures.md, "Who retries the upload"). The audit row
 * (failure_pattern_exports) is updated after every attempt (status and notes); retry_count and
 * last_retry_at count the retry task's re-uploads only, so AGG_FALLBACK_MAX_TRIES bounds those. The
 * job itself completes either way: a fallback is an outcome, not a job failure.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import type { Config } from '../config.js';
import { createExport, listPendingFallbacks, recordExportAttempt, type ExportRecord } from '../db/failure-exports.js';
import { candidatePatterns } from '../db/failures.js';
import type { Db } from '../db/pool.js';
import { codeOf } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { canonicalJson } from '../queues/contract.js';
import type { AggregationResult } from '../queues/payloads.js';
import { retry } from '../retry.js';
import type { Storage } from '../storage/client.js';
import { aggregationKey } from '../storage/keys.js';
import { uploadStream } from '../storage/upload.js';
import { failureMetrics, type FailureMetrics } from './metrics.js';

/** Sample messages kept per pattern. */
export const SAMPLES = 3;
/** What the audit rows name as uploader. */
export const UPLOADER = 'stowage-aggregation';
/** Default number of fallback files one retry run handles. */
export const DEFAULT_RETRY_MAX = 100;

export interface AggregationDeps {
  config: Config;
  db: Db;
  /** Throws STOWAGE_ERR_CONFIG when object storage is not configured. */
  storage: () => Storage;
  metrics: Metrics;
  logger: Logger;
  signal?: AbortSignal;
}

export interface CandidatePattern {
  error_code: string;
  signature: string;
  count: number;
  tenants: string[];
  first_seen: string;
  last_seen: string;
  samples: string[];
}

export interface AggregationExport {
  generated_at: string;
  window: { days: number; start: string; end: string; min_occurrences: number };
  pattern_count: number;
  patterns: CandidatePattern[];
}

/** The export's summary: the `aggregate` job result (declared once, in the queue contract). */
export type AggregationSummary = Omit<Extract<AggregationResult, { task: 'aggregate' }>, 'task'>;

/** Build the export for a window. Pure apart from the read; same rows → same bytes. */
export async function buildExport(
  db: Db,
  w: { days: number; minOccurrences: number; windowEnd: Date },
): Promise<{ doc: AggregationExport; body: Buffer; sha256: string }> {
  // Whole seconds: the key's timestamp has no milliseconds, and the window must match it.
  const end = new Date(Math.floor(w.windowEnd.getTime() / 1000) * 1000);
  const start = new Date(end.getTime() - w.days * 86_400_000);
  const rows = await candidatePatterns(db, { from: start, to: end, minOccurrences: w.minOccurrences, samples: SAMPLES });
  const patterns = rows.map((r) => ({
    error_code: r.errorCode,
    signature: r.signature,
    count: r.count,
    tenants: r.tenants,
    first_seen: r.firstSeen.toISOString(),
    last_seen: r.lastSeen.toISOString(),
    samples: r.samples,
  }));
  const doc: AggregationExport = {
    generated_at: end.toISOString(),
    window: { days: w.days, start: start.toISOString(), end: end.toISOString(), min_occurrences: w.minOccurrences },
    pattern_count: patterns.length,
    patterns,
  };
  const body = Buffer.from(`${canonicalJson(doc)}\n`, 'utf8');
  return { doc, body, sha256: createHash('sha256').update(body).digest('hex') };
}

function describe(err: unknown): string {
  return `${codeOf(err)}: ${(err as Error)?.message ?? String(err)}`.slice(0, 1000);
}

/** Upload `body` to `key` once; the verified SHA-256 must be `sha256`. */
async function uploadOnce(deps: AggregationDeps, fm: FailureMetrics, key: string, body: Buffer, sha256: string): Promise<void> {
  const storage = deps.storage();
  const started = performance.now();
  try {
    const r = await uploadStream(storage, {
      key,
      body: Readable.from([body]),
      contentType: 'application/json',
      metadata: { 'stowage-kind': 'failure-patterns', sha256 },
      ...(deps.signal ? { signal: deps.signal } : {}),
      logger: deps.logger,
      metrics: deps.metrics,
    });
    if (r.sha256 !== sha256 || r.size !== body.length)
      throw new Error(`verification failed: stored ${r.size} bytes with SHA-256 ${r.sha256}`);
    fm.uploadAttempts.inc({ status: 'success' });
    fm.uploadBytes.inc(body.length);
  } catch (err) {
    fm.uploadAttempts.inc({ status: 'failure' });
    throw err;
  } finally {
    fm.uploadDuration.observe((performance.now() - started) / 1000);
  }
}

/** Write the file atomically (temp name, then rename) into the fallback directory. */
async function writeFallback(dir: string, key: string, body: Buffer): Promise<string> {
  const abs = resolve(dir);
  await mkdir(abs, { recursive: true });
  const path = join(abs, basename(key));
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, body);
  await rename(tmp, path);
  return path;
}

/**
 * Aggregate now and store the export. `skipStore`: build it only (no upload, no file, no audit
 * row); the caller prints it. `uploadRetries`: upload retries after the first try, default
 * R2_MAX_RETRIES (config `failures.maxRetries`).
 */
export async function runAggregation(
  deps: AggregationDeps,
  options: { days: number; minOccurrences: number; windowEnd: Date; skipStore?: boolean; uploadRetries?: number },
): Promise<{ summary: AggregationSummary; doc: AggregationExport }> {
  const { config, db, logger } = deps;
  const fm = failureMetrics(deps.metrics.registry);
  const { doc, body, sha256 } = await buildExport(db, options);
  const key = aggregationKey(config.failures.uploadPrefix, new Date(doc.generated_at), sha256);
  const base = { key, sha256, size: body.length, patterns: doc.pattern_count, window: doc.window };
  if (options.skipStore) {
    return { summary: { ...base, status: 'skipped', exportId: null, localPath: null, attempts: 0 }, doc };
  }

  const row = await createExport(db, { s3Key: key, uploader: UPLOADER, sizeBytes: body.length, sha256 });
  // The upload's retries are owned here, not by BullMQ: the CLI runs this without a queue, and a
  // store that stays down ends in the local fallback, which the job reports as an outcome. BullMQ
  // retries the job only when something else fails (Postgres, the fallback write), and then the
  // processor passes uploadRetries 0, so the attempts do not multiply. PUTs of the export before
  // the job is parked, at the defaults (R2_MAX_RETRIES 5, 5 job attempts, SDK maxAttempts 3):
  // was 5 attempts × 6 uploads × 3 = 90; now 6 × 3 = 18 in the first attempt + 4 × 1 × 3 = 12: 30.
  let attempts = 0;
  let lastError: unknown;
  const uploaded = await retry(
    async (attempt) => {
      attempts = attempt;
      try {
        await uploadOnce(deps, fm, key, body, sha256);
      } catch (err) {
        lastError = err;
        throw err;
      }
    },
    {
      maxAttempts: (options.uploadRetries ?? config.failures.maxRetries) + 1,
      delayMs: config.failures.retryBaseDelayMs,
      jitter: 0.5,
      ...(deps.signal ? { signal: deps.signal } : {}),
      // Not configured: no attempt can succeed; go straight to the fallback.
      retryable: (err) => codeOf(err) !== 'STOWAGE_ERR_CONFIG',
      onRetry: async ({ error, attempt, delayMs }) => {
        await recordExportAttempt(db, row.id, {
          status: 'retrying',
          retried: false,
          notes: `attempt ${attempt} failed: ${describe(error)}`,
          localPath: null,
        });
        logger.warn({ key, attempt, retryInMs: Math.round(delayMs), err: describe(error) }, 'export upload failed; retrying');
      },
    },
  ).then(
    () => true,
    (err: unknown) => {
      // The upload failing (or the job aborted before it) falls back; the audit row's write failing
      // fails the job, as it did before.
      if (err !== lastError && !(deps.signal?.aborted && err === deps.signal.reason)) throw err;
      lastError = err;
      return false;
    },
  );
  if (uploaded) {
    // After the loop: Postgres failing here fails the job; it must not re-upload a stored object.
    await recordExportAttempt(db, row.id, {
      status: 'uploaded',
      retried: false,
      notes: `uploaded on attempt ${attempts}`,
      localPath: null,
    });
    logger.info({ key, size: body.length, patterns: doc.pattern_count, attempt: attempts }, 'failure patterns exported');
    return { summary: { ...base, status: 'uploaded', exportId: row.id, localPath: null, attempts }, doc };
  }
  const localPath = await writeFallback(config.failures.localFallbackDir, key, body);
  await recordExportAttempt(db, row.id, {
    status: 'fallback_local',
    retried: false,
    notes: `store failed after ${attempts} attempt(s): ${describe(lastError)}`,
    localPath,
  });
  fm.uploadFallback.inc();
  logger.error(
    { key, localPath, attempts, err: describe(lastError) },
    'export kept in the local fallback directory; the retry task will upload it',
  );
  return { summary: { ...base, status: 'fallback_local', exportId: row.id, localPath, attempts }, doc };
}

export interface RetryOutcome {
  id: string;
  key: string;
  localPath: string;
  status: 'uploaded' | 'retrying' | 'failed' | 'would-retry' | 'skipped';
  notes: string;
}

/**
 * Re-upload fallback exports, oldest first, at most `max`. A verified upload marks the row
 * uploaded (retry_count, last_retry_at) and then deletes the file; a failure counts a try, and the
 * `fallbackMaxTries`-th failed try marks it failed (the file stays for a person to look at).
 * A missing or altered file fails the row at once. With storage unconfigured nothing is tried.
 */
export async function retryFallbacks(deps: AggregationDeps, options: { max?: number; dryRun?: boolean } = {}): Promise<RetryOutcome[]> {
  const { db, config, logger } = deps;
  const fm = failureMetrics(deps.metrics.registry);
  const rows = await listPendingFallbacks(db, options.max ?? DEFAULT_RETRY_MAX);
  const out: RetryOutcome[] = [];
  for (const row of rows) {
    const localPath = row.localPath!;
    const o = (status: RetryOutcome['status'], notes: string) => out.push({ id: row.id, key: row.s3Key, localPath, status, notes });
    if (options.dryRun) {
      o('would-retry', `retry ${row.retryCount + 1} of at most ${config.failures.fallbackMaxTries}`);
      continue;
    }
    if (deps.signal?.aborted) break;
    let body: Buffer;
    try {
      body = await readFile(localPath);
    } catch (err) {
      const notes = `local file unreadable: ${(err as Error).message}`;
      await recordExportAttempt(db, row.id, { status: 'failed', retried: true, notes, localPath });
      o('failed', notes);
      continue;
    }
    const sha256 = createHash('sha256').update(body).digest('hex');
    if (row.sha256 && sha256 !== row.sha256) {
      const notes = `local file changed: SHA-256 ${sha256}, expected ${row.sha256}`;
      await recordExportAttempt(db, row.id, { status: 'failed', retried: true, notes, localPath });
      o('failed', notes);
      continue;
    }
    try {
      await uploadOnce(deps, fm, row.s3Key, body, sha256);
    } catch (err) {
      if (codeOf(err) === 'STOWAGE_ERR_CONFIG') {
        o('skipped', describe(err));
        logger.warn({ err: describe(err) }, 'fallback retry skipped: object storage is not configured');
        break;
      }
      const failed = row.retryCount + 1 >= config.failures.fallbackMaxTries;
      const notes = `retry ${row.retryCount + 1} failed: ${describe(err)}`;
      await recordExportAttempt(db, row.id, { status: failed ? 'failed' : 'retrying', retried: true, notes, localPath });
      o(failed ? 'failed' : 'retrying', notes);
      logger.warn({ key: row.s3Key, retry: row.retryCount + 1, failed }, 'fallback re-upload failed');
      continue;
    }
    const notes = `uploaded by retry ${row.retryCount + 1}`;
    await recordExportAttempt(db, row.id, { status: 'uploaded', retried: true, notes, localPath: null });
    fm.retrySuccess.inc();
    // Deleted only once the row says uploaded: a crash in between leaves a stray file, never a lost export.
    await unlink(localPath).catch((err: unknown) =>
      logger.warn({ localPath, err: (err as Error).message }, 'uploaded fallback file not deleted'),
    );
    o('uploaded', notes);
    logger.info({ key: row.s3Key, localPath }, 'fallback export uploaded');
  }
  return out;
}

export type { ExportRecord };
