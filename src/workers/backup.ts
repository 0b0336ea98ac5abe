/**
 * backup: consistent snapshots of a set's SQLite databases, one tar.gz per run in the store.
 *
 * 1. Resolve the set (config `backupSets` by `set`, or ad hoc from the payload: its SQLite paths
 *    must resolve inside the source roots, `sourceRoots`; a configured set's paths are the
 *    operator's and are taken as written). `task: prune`
 *    applies the set's retention instead; `task: drill` restores its newest backup into a scratch
 *    folder (and a scratch PostgreSQL database) and verifies it.
 * 2. Take the set's lock (src/backups/lock.ts): a session-level Postgres advisory lock keyed by the set name, held on one
 *    pooled connection for the whole run, so two backups of one set never run at once anywhere in
 *    the fleet (a second one fails retryably and backs off). The lock dies with the connection, so
 *    a crashed worker cannot leave it behind.
 * 3. Snapshot each database with `VACUUM INTO` into a fresh temp dir: one read transaction, so the
 *    copy is a consistent point in time while the application keeps writing (in WAL mode writers
 *    are not blocked; the online backup API would restart on every foreign write). Never a file copy.
 *    It runs in a worker thread (src/backups/snapshot.ts), so a large database does not block the
 *    event loop (lock renewal).
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
import {
  BACKUP_FORMAT_VERSION,
  createBackupArchive,
  fileChecksum,
  fileSize,
  type ArchiveFile,
  type BackupMetadata,
} from '../backups/archive.js';
import { runRestoreDrill } from '../backups/drill.js';
import { withBackupLock } from '../backups/lock.js';
import { dumpPostgres, postgresConnection } from '../backups/postgres.js';
import { pruneBackupSet } from '../backups/prune.js';
import { snapshotSqliteInThread } from '../backups/snapshot.js';
import { mapLimit } from '../concurrency.js';
import type { BackupSet, Config } from '../config.js';
import { recordBackup, type BackupDatabaseEntry } from '../db/backups.js';
import { upsertUploadReceipt } from '../db/upload-receipts.js';
import { PermanentError } from '../errors.js';
import type { BackupResult } from '../queues/index.js';
import { backupKey, objectUrl } from '../storage/keys.js';
import { resolveInsideRoots } from '../storage/source-roots.js';
import { uploadStream } from '../storage/upload.js';
import { VERSION } from '../version.js';
import type { Processor } from './context.js';

/** SQLite snapshots taken at once (VACUUM INTO is CPU and disk bound: more than two only queue). */
const SNAPSHOT_CONCURRENCY = 2;

type ResolvedSet = Pick<BackupSet, 'name' | 'sqlite' | 'postgres'>;

/** The set to back up: the configured one named `set`, or the payload's ad hoc databases. */
function resolveBackupSet(
  config: Pick<Config, 'backupSets'>,
  p: {
    set?: string | undefined;
    name?: string | undefined;
    sqlite?: { name: string; path: string }[] | undefined;
    postgres?: { name: string; url: string }[] | undefined;
  },
): ResolvedSet {
  if (p.set) {
    const found = config.backupSets.find((s) => s.name === p.set);
    if (!found) throw new PermanentError(`set: no backup set named ${JSON.stringify(p.set)} in the configuration`);
    return found;
  }
  return { name: p.name!, sqlite: p.sqlite ?? [], postgres: p.postgres ?? [] };
}

/**
 * An ad hoc set's SQLite sources with their paths resolved and held to the source roots (any
 * outside: PermanentError naming the field). The snapshot opens the resolved path, so a link
 * swapped after the check is not followed; `source_path` in the metadata keeps the path as given.
 */
async function checkedAdHocSqlite(
  sqlite: ResolvedSet['sqlite'],
  roots: readonly string[],
): Promise<{ name: string; path: string; open: string }[]> {
  const out: { name: string; path: string; open: string }[] = [];
  for (const [i, s] of sqlite.entries()) out.push({ ...s, open: await resolveInsideRoots(`sqlite.${i}.path`, s.path, roots) });
  return out;
}

type BackupRunResult = Extract<BackupResult, { status: 'completed' }>;

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
    const drill = await runRestoreDrill({ db: ctx.db, storage: ctx.storage(), config: ctx.config, logger: ctx.logger }, set.name);
    if (!drill.ok) throw new PermanentError(`drill of set ${set.name} failed: ${drill.error}`);
    return { status: 'drilled', ...drill };
  }
  const sqlite = job.data.set
    ? set.sqlite.map((s) => ({ ...s, open: s.path }))
    : await checkedAdHocSqlite(set.sqlite, ctx.config.sourceRoots);
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
      const snapshots = await mapLimit(sqlite, SNAPSHOT_CONCURRENCY, async (source) => {
        ctx.signal.throwIfAborted();
        const filename = `${source.name}.db`;
        const dest = join(work, filename);
        await ctx.progress({ stage: `snapshot:${source.name}`, bytes: 0 });
        await snapshotSqliteInThread(source.open, dest);
        const size = await fileSize(dest);
        const entry: BackupDatabaseEntry = {
          name: source.name,
          filename,
          size_bytes: size,
          checksum: await fileChecksum(dest),
          source_path: source.path,
        };
        return { entry, file: { filename, path: dest, size } };
      });
      for (const { entry, file } of snapshots) {
        databases.push(entry);
        files.push(file);
      }
      for (const source of set.postgres) {
        ctx.signal.throwIfAborted();
        const filename = `${source.name}.pgdump`;
        if (databases.some((d) => d.filename === filename))
          throw new PermanentError(`set ${set.name}: two databases are named ${source.name}`);
        const dest = join(work, filename);
        await ctx.progress({ stage: `dump:${source.name}`, bytes: 0 });
        await dumpPostgres(source.url, dest, ctx.signal);
        const size = await fileSize(dest);
        // The source without its password: the metadata and the backups row are not secret.
        databases.push({
          name: source.name,
          filename,
          size_bytes: size,
          checksum: await fileChecksum(dest),
          kind: 'postgres',
          source: postgresConnection(source.url).url,
        });
        files.push({ filename, path: dest, size });
      }
      const totalBytes = files.reduce((n, f) => n + f.size, 0);
      const metadata: BackupMetadata = {
        timestamp: takenAt.toISOString().replace(/\.\d{3}Z$/, 'Z'),
        version: BACKUP_FORMAT_VERSION,
        stowage_version: VERSION,
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
