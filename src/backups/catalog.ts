/**
 * The backups a bucket holds, by name: find one (`resolveBackup`), describe it for `list` and
 * GET /api/backups, and delete its archive and sidecar from the store. Shared by the CLI, HTTP and
 * retention (src/backups/prune.ts).
 */
import { DeleteObjectsCommand } from '@aws-sdk/client-s3';
import { getBackupByKey, type BackupRow } from '../db/backups.js';
import type { Db } from '../db/pool.js';
import { NotFoundError } from '../errors.js';
import type { Storage } from '../storage/client.js';
import { backupKeyOf, backupName, sha256SidecarKey } from '../storage/keys.js';
import { storeError } from '../storage/store-errors.js';

/** Delete a backup archive and its `.sha256` sidecar from the store. */
export async function deleteBackupObject(storage: Storage, key: string): Promise<void> {
  try {
    const res = await storage.client.send(
      new DeleteObjectsCommand({
        Bucket: storage.bucket,
        Delete: { Objects: [{ Key: key }, { Key: sha256SidecarKey(key) }], Quiet: true },
      }),
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
