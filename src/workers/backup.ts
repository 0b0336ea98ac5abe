/**
 * backup: consistent snapshots of a set's SQLite databases, one tar.gz per run in the store.
 *
 * 1. Resolve the set (config `backupSets` by `set`, or ad hoc from the payload).
 * 2. Take the set's lock: a session-level Postgres advisory lock keyed by the set name, held on one
 *    pooled connection for the whole run, so two backups of one set never run at once anywhere in
 *    the fleet (a second one fails retryably and backs off). The lock dies with the connection, so
 *    a crashed worker cannot leave it behind.
 * 3. Snapshot each database with `VACUUM INTO` into a fresh temp dir: one read transaction, so the
 *    copy is a consistent point in time while the application keeps writing (in WAL mode writers
 *    are not blocked; the online backup API would restart on every foreign write). Never a file copy.
 *    It runs in a worker thread, so a large database does not block the event loop (lock renewal).
 * 4. `PRAGMA quick_check` on each snapshot; any problem fails the job before anything is uploaded.
 * 5. Stream metadata + snapshots through tar → gzip → uploadStream (one-pass SHA-256, multipart,
 *    sidecar `<key>.sha256`), then a `backups` row, an upload receipt and `backup_completed`.
 * The temp dir is removed whatever happens.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import type { BackupSet, Config } from '../config.js';
import { listBackups, markBackupDeleted, recordBackup, type BackupDatabaseEntry, type BackupRow } from '../db/backups.js';
import type { Db } from '../db/pool.js';
import { upsertUploadReceipt } from '../db/upload-receipts.js';
import { PermanentError, StowageError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import {
  BACKUP_FORMAT_VERSION,
  createBackupArchive,
  fileChecksum,
  fileSize,
  type ArchiveFile,
  type BackupMetadata,
} from '../storage/backup-archive.js';
import type { Storage } from '../storage/client.js';
import { DeleteObjectsCommand } from '@aws-sdk/client-s3';
import { backupKey, objectUrl, sha256SidecarKey } from '../storage/keys.js';
import { applyRetentionPolicy, type RetentionDecision, type RetentionPolicy } from '../storage/retention.js';
import { storeError, uploadStream } from '../storage/upload.js';
import type { Processor } from './context.js';

export const STOWAGE_VERSION = '0.1.0';

type ResolvedSet = Pick<BackupSet, 'name' | 'sqlite' | 'postgres'>;

export function resolveBackupSet(config: Pick<Config, 'backupSets'>, p: { set?: string; name?: string; sqlite?: { name: string; path: string }[]; postgres?: { name: string; url: string }[] }): ResolvedSet {
  if (p.set) {
    const found = config.backupSets.find((s) => s.name === p.set);
    if (!found) throw new PermanentError(`set: no backup set named ${JSON.stringify(p.set)} in the configuration`);
    return found;
  }
  return { name: p.name!, sqlite: p.sqlite ?? [], postgres: p.postgres ?? [] };
}

/** The advisory-lock key of a set (two int4s: a namespace and the set's hash). */
const LOCK_NAMESPACE = 0x5354_4f57; // 'STOW'

/**
 * Run `fn` holding the set's lock; throws a retryable StowageError when another backup of the set
 * holds it.
 */
export async function withBackupLock<T>(db: Db, set: string, fn: () => Promise<T>): Promise<T> {
  const client = await db.pool.connect();
  let locked = false;
  try {
    const { rows } = await client.query('SELECT pg_try_advisory_lock($1::int, hashtext($2)) AS ok', [LOCK_NAMESPACE, `backup:${set}`]);
    locked = rows[0].ok === true;
    if (!locked) throw new StowageError('STOWAGE_ERR_INTERNAL', `another backup of set ${set} is running; will retry`);
    return await fn();
  } finally {
    if (locked) {
      await client.query('SELECT pg_advisory_unlock($1::int, hashtext($2))', [LOCK_NAMESPACE, `backup:${set}`]).catch(() => {});
    }
    client.release();
  }
}

/**
 * A consistent snapshot of a live SQLite database at `dest` with `VACUUM INTO`, then
 * `PRAGMA quick_check` on the snapshot. Throws PermanentError if the source is missing,
 * StowageError if the snapshot is not ok.
 */
export function snapshotSqlite(source: string, dest: string): void {
  let db: Database.Database;
  try {
    db = new Database(source, { readonly: true, fileMustExist: true });
  } catch (err) {
    throw new PermanentError(`sqlite ${source}: cannot open: ${(err as Error).message}`, { cause: err });
  }
  try {
    db.pragma('busy_timeout = 10000');
    db.prepare('VACUUM INTO ?').run(dest);
  } finally {
    db.close();
  }
  const problems = quickCheck(dest);
  if (problems.length) {
    throw new StowageError('STOWAGE_ERR_INTERNAL', `sqlite ${source}: snapshot failed quick_check: ${problems.slice(0, 5).join('; ')}`);
  }
}

const SNAPSHOT_THREAD = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.module);
let stage = 'open';
try {
  const src = new Database(workerData.source, { readonly: true, fileMustExist: true });
  stage = 'snapshot';
  try {
    src.pragma('busy_timeout = 10000');
    src.prepare('VACUUM INTO ?').run(workerData.dest);
  } finally {
    src.close();
  }
  stage = 'check';
  const snap = new Database(workerData.dest, { readonly: true, fileMustExist: true });
  try {
    const rows = snap.pragma('quick_check');
    const messages = rows.map((r) => Object.values(r)[0] ?? '');
    parentPort.postMessage({ ok: true, problems: messages.length === 1 && messages[0] === 'ok' ? [] : messages });
  } finally {
    snap.close();
  }
} catch (err) {
  parentPort.postMessage({ ok: false, stage, message: String(err && err.message || err) });
}
`;

/**
 * snapshotSqlite off the event loop: VACUUM INTO and quick_check are synchronous in better-sqlite3,
 * and a large database would otherwise block the worker past its BullMQ lock (the job would be
 * taken for stalled). Runs in a worker thread; same errors as snapshotSqlite.
 */
export async function snapshotSqliteInThread(source: string, dest: string): Promise<void> {
  const module = createRequire(import.meta.url).resolve('better-sqlite3');
  const reply = await new Promise<{ ok: true; problems: string[] } | { ok: false; stage: string; message: string }>((resolve, reject) => {
    const worker = new Worker(SNAPSHOT_THREAD, { eval: true, workerData: { module, source, dest } });
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`snapshot thread exited with code ${code}`)));
  });
  if (!reply.ok) {
    if (reply.stage === 'open') throw new PermanentError(`sqlite ${source}: cannot open: ${reply.message}`);
    throw new StowageError('STOWAGE_ERR_INTERNAL', `sqlite ${source}: ${reply.stage} failed: ${reply.message}`);
  }
  if (reply.problems.length) {
    throw new StowageError('STOWAGE_ERR_INTERNAL', `sqlite ${source}: snapshot failed quick_check: ${reply.problems.slice(0, 5).join('; ')}`);
  }
}

/** `PRAGMA quick_check` (or `integrity_check`) of a database file: [] when ok, else the problems. */
export function quickCheck(path: string, pragma: 'quick_check' | 'integrity_check' = 'quick_check'): string[] {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const rows = db.pragma(pragma) as Record<string, string>[];
    const messages = rows.map((r) => Object.values(r)[0] ?? '');
    return messages.length === 1 && messages[0] === 'ok' ? [] : messages;
  } finally {
    db.close();
  }
}

export interface BackupRunResult {
  [k: string]: unknown;
  status: 'completed';
  set: string;
  key: string;
  size: number;
  sha256: string;
  databases: BackupDatabaseEntry[];
}

export const backup: Processor<'backup'> = async (job, ctx) => {
  const set = resolveBackupSet(ctx.config, job.data);
  if (job.data.task === 'prune') {
    const policy = ctx.config.backupSets.find((s) => s.name === set.name)!.retention;
    const pruned = await withBackupLock(ctx.db, set.name, () =>
      pruneBackupSet({ db: ctx.db, storage: ctx.storage(), logger: ctx.logger }, set.name, policy, { dryRun: job.data.dryRun }),
    );
    return {
      status: 'pruned',
      set: set.name,
      dryRun: pruned.dryRun,
      deleted: pruned.deleted,
      decisions: pruned.decisions.map((d) => ({ key: d.backup.key, action: d.action, reasons: d.reasons })),
    };
  }
  if (set.postgres.length) {
    throw new PermanentError(`set ${set.name}: PostgreSQL backups (pg_dump) are not implemented yet`);
  }
  const storage = ctx.storage();
  const log = ctx.logger.child({ set: set.name });

  return withBackupLock(ctx.db, set.name, async () => {
    const takenAt = new Date(Math.floor(Date.now() / 1000) * 1000);
    const key = backupKey(set.name, takenAt);
    const work = await mkdtemp(join(tmpdir(), `stowage-backup-${set.name}-`));
    try {
      const files: ArchiveFile[] = [];
      const databases: BackupDatabaseEntry[] = [];
      for (const source of set.sqlite) {
        ctx.signal.throwIfAborted();
        const filename = `${source.name}.db`;
        const dest = join(work, filename);
        await ctx.progress({ stage: `snapshot:${source.name}`, bytes: 0 });
        await snapshotSqliteInThread(source.path, dest);
        const size = await fileSize(dest);
        databases.push({ name: source.name, filename, size_bytes: size, checksum: await fileChecksum(dest), source_path: source.path });
        files.push({ filename, path: dest, size });
      }
      const totalBytes = files.reduce((n, f) => n + f.size, 0);
      const metadata: BackupMetadata = {
        timestamp: takenAt.toISOString().replace(/\.\d{3}Z$/, 'Z'),
        version: BACKUP_FORMAT_VERSION,
        stowage_version: STOWAGE_VERSION,
        set: set.name,
        databases,
      };

      const uploaded = await uploadStream(storage, {
        key,
        body: createBackupArchive(metadata, files, { signal: ctx.signal }),
        contentType: 'application/gzip',
        metadata: { 'stowage-kind': 'backup', 'stowage-backup-set': set.name },
        signal: ctx.signal,
        onProgress: (bytes) => {
          ctx.progress({ stage: 'uploading', bytes, totalBytes }).catch(() => {});
        },
        logger: log,
        metrics: ctx.metrics,
      });

      await recordBackup(ctx.db, {
        set: set.name,
        bucket: storage.bucket,
        key,
        takenAt,
        size: uploaded.size,
        sha256: uploaded.sha256,
        // Every snapshot passed quick_check and uploadStream confirmed the stored size by HEAD.
        verified: true,
        databases,
        queue: 'backup',
        jobId: job.id ?? null,
      });
      await upsertUploadReceipt(ctx.db.pool, {
        bucket: storage.bucket,
        key,
        size: uploaded.size,
        sha256: uploaded.sha256,
        etag: uploaded.etag,
        status: 'uploaded',
        queue: 'backup',
        jobId: job.id ?? null,
      });
      await ctx.emit('backup_completed', { set: set.name, key, size: uploaded.size, sha256: uploaded.sha256, databases: databases.length });
      log.info({ key, url: objectUrl(storage.bucket, key), size: uploaded.size }, 'backup stored');
      const result: BackupRunResult = { status: 'completed', set: set.name, key, size: uploaded.size, sha256: uploaded.sha256, databases };
      return result;
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
};

export interface PruneResult {
  set: string;
  dryRun: boolean;
  decisions: RetentionDecision<BackupRow>[];
  deleted: string[];
}

/**
 * Apply a retention policy to a set: decide (pure, src/storage/retention.ts), then for each backup
 * to delete remove the object and its sidecar and mark its row deleted. The row is marked only
 * after the store confirmed the delete, so a failure leaves it listed for the next run.
 */
export async function pruneBackupSet(
  deps: { db: Db; storage: Storage; logger?: Logger },
  set: string,
  policy: RetentionPolicy,
  options: { dryRun?: boolean } = {},
): Promise<PruneResult> {
  const rows = await listBackups(deps.db, set);
  const decisions = applyRetentionPolicy(rows, policy);
  const deleted: string[] = [];
  if (!options.dryRun) {
    for (const d of decisions) {
      if (d.action !== 'delete') continue;
      const { key } = d.backup;
      try {
        const res = await deps.storage.client.send(
          new DeleteObjectsCommand({ Bucket: deps.storage.bucket, Delete: { Objects: [{ Key: key }, { Key: sha256SidecarKey(key) }], Quiet: true } }),
        );
        if (res.Errors?.length) throw new Error(res.Errors.map((e) => `${e.Key}: ${e.Code} ${e.Message}`).join('; '));
      } catch (err) {
        throw storeError(err, `delete backup ${key}`);
      }
      await markBackupDeleted(deps.db, d.backup.id, `retention: ${d.reasons.join(', ')}`);
      deps.logger?.info({ key }, 'backup deleted by retention');
      deleted.push(key);
    }
  }
  return { set, dryRun: Boolean(options.dryRun), decisions, deleted };
}
