/**
 * backup: consistent snapshots of a set's SQLite databases, one tar.gz per run in the store.
 *
 * 1. Resolve the set (config `backupSets` by `set`, or ad hoc from the payload). `task: prune`
 *    applies the set's retention instead; `task: drill` restores its newest backup into a scratch
 *    folder (and a scratch PostgreSQL database) and verifies it.
 * 2. Take the set's lock: a session-level Postgres advisory lock keyed by the set name, held on one
 *    pooled connection for the whole run, so two backups of one set never run at once anywhere in
 *    the fleet (a second one fails retryably and backs off). The lock dies with the connection, so
 *    a crashed worker cannot leave it behind.
 * 3. Snapshot each database with `VACUUM INTO` into a fresh temp dir: one read transaction, so the
 *    copy is a consistent point in time while the application keeps writing (in WAL mode writers
 *    are not blocked; the online backup API would restart on every foreign write). Never a file copy.
 *    It runs in a worker thread, so a large database does not block the event loop (lock renewal).
 * 4. `PRAGMA quick_check` on each snapshot; any problem fails the job before anything is uploaded.
 *    PostgreSQL databases: `pg_dump --format=custom` streamed into the same temp dir, then
 *    `pg_restore --list` on the dump; the metadata's `source` is the URL without its password.
 * 5. Stream metadata + snapshots through tar → gzip → uploadStream (one-pass SHA-256, multipart,
 *    sidecar `<key>.sha256`), then a `backups` row, an upload receipt and `backup_completed`.
 * The temp dir is removed whatever happens.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BackupSet, Config } from '../config.js';
import { getBackupByKey, listBackups, markBackupDeleted, recordBackup, type BackupDatabaseEntry, type BackupRow } from '../db/backups.js';
import type { Db } from '../db/pool.js';
import { upsertUploadReceipt } from '../db/upload-receipts.js';
import { NotFoundError, PermanentError, StowageError, ValidationError } from '../errors.js';
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
import { backupKey, backupKeyOf, backupName, objectUrl, sha256SidecarKey } from '../storage/keys.js';

export { backupName, backupKeyOf } from '../storage/keys.js';
import { applyRetentionPolicy, type RetentionDecision, type RetentionPolicy } from '../storage/retention.js';
import { storeError } from '../storage/store-errors.js';
import { uploadStream } from '../storage/upload.js';
import { mapLimit } from '../concurrency.js';
import type { Processor } from './context.js';
import { dumpPostgres, postgresConnection, quickCheck, snapshotSqliteInThread } from './backup-databases.js';

export { postgresConnection, quickCheck } from './backup-databases.js';

export const STOWAGE_VERSION = '0.1.0';

/** SQLite snapshots taken at once (VACUUM INTO is CPU and disk bound: more than two only queue). */
const SNAPSHOT_CONCURRENCY = 2;

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
  if (job.data.task === 'drill') {
    const { runRestoreDrill } = await import('./backup-restore.js');
    const drill = await runRestoreDrill({ db: ctx.db, storage: ctx.storage(), config: ctx.config, logger: ctx.logger }, set.name);
    if (!drill.ok) throw new PermanentError(`drill of set ${set.name} failed: ${drill.error}`);
    return { status: 'drilled', ...drill };
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
      // Two snapshots at a time (each in its own thread, checksummed here while the other runs):
      // each database is still one consistent point in time, and the set's snapshots take about
      // half as long on a multi-core host. Metadata keeps the configured order.
      const snapshots = await mapLimit(set.sqlite, SNAPSHOT_CONCURRENCY, async (source) => {
        ctx.signal.throwIfAborted();
        const filename = `${source.name}.db`;
        const dest = join(work, filename);
        await ctx.progress({ stage: `snapshot:${source.name}`, bytes: 0 });
        await snapshotSqliteInThread(source.path, dest);
        const size = await fileSize(dest);
        const entry: BackupDatabaseEntry = { name: source.name, filename, size_bytes: size, checksum: await fileChecksum(dest), source_path: source.path };
        return { entry, file: { filename, path: dest, size } };
      });
      for (const { entry, file } of snapshots) {
        databases.push(entry);
        files.push(file);
      }
      for (const source of set.postgres) {
        ctx.signal.throwIfAborted();
        const filename = `${source.name}.pgdump`;
        if (databases.some((d) => d.filename === filename)) throw new PermanentError(`set ${set.name}: two databases are named ${source.name}`);
        const dest = join(work, filename);
        await ctx.progress({ stage: `dump:${source.name}`, bytes: 0 });
        await dumpPostgres(source.url, dest, ctx.signal);
        const size = await fileSize(dest);
        // The source without its password: the metadata and the backups row are not secret.
        databases.push({ name: source.name, filename, size_bytes: size, checksum: await fileChecksum(dest), kind: 'postgres', source: postgresConnection(source.url).url });
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
      await deleteBackupObject(deps.storage, key);
      await markBackupDeleted(deps.db, d.backup.id, `retention: ${d.reasons.join(', ')}`);
      deps.logger?.info({ key }, 'backup deleted by retention');
      deleted.push(key);
    }
  }
  return { set, dryRun: Boolean(options.dryRun), decisions, deleted };
}

/** Delete a backup archive and its `.sha256` sidecar from the store. */
export async function deleteBackupObject(storage: Storage, key: string): Promise<void> {
  try {
    const res = await storage.client.send(
      new DeleteObjectsCommand({ Bucket: storage.bucket, Delete: { Objects: [{ Key: key }, { Key: sha256SidecarKey(key) }], Quiet: true } }),
    );
    if (res.Errors?.length) throw new Error(res.Errors.map((e) => `${e.Key}: ${e.Code} ${e.Message}`).join('; '));
  } catch (err) {
    throw storeError(err, `delete backup ${key}`);
  }
}

/** The backups row of a backup named `name` in `bucket`; NotFoundError when there is none (or it was deleted). */
export async function resolveBackup(db: Db, bucket: string, name: string): Promise<BackupRow> {
  const key = backupKeyOf(name);
  const row = await getBackupByKey(db, bucket, key);
  if (!row || row.status === 'deleted') throw new NotFoundError(`no backup named ${backupName(key)}${row ? ' (it was deleted)' : ''}`);
  return row;
}

/** What `list` shows of a backup (CLI --json and GET /api/backups). */
export function describeBackup(row: BackupRow, now = Date.now()) {
  return {
    name: backupName(row.key),
    set: row.set,
    key: row.key,
    takenAt: row.takenAt.toISOString(),
    ageSeconds: Math.max(0, Math.round((now - row.takenAt.getTime()) / 1000)),
    size: row.size,
    sha256: row.sha256,
    verified: row.verified,
    databases: row.databases.map((d) => ({ name: d.name, kind: d.kind ?? 'sqlite', filename: d.filename, size: d.size_bytes })),
  };
}
