/** SQL for the `backups` table (migration 006): one row per backup archive. */
import type { Db } from './pool.js';
import type { Queryable } from './upload-receipts.js';

export interface BackupDatabaseEntry {
  name: string;
  filename: string;
  size_bytes: number;
  checksum: string;
  /** `postgres` for a pg_dump (custom format); absent or `sqlite` for a SQLite snapshot. */
  kind?: 'sqlite' | 'postgres';
  /** SQLite: the live database's absolute path (where a restore puts the file back). */
  source_path?: string;
  /** PostgreSQL: the database URL with any password removed. */
  source?: string;
}

export interface BackupRow {
  id: number;
  set: string;
  bucket: string;
  key: string;
  takenAt: Date;
  /** Alias of takenAt, for the retention policy. */
  createdAt: Date;
  size: number;
  sha256: string;
  status: 'completed' | 'deleted';
  verified: boolean;
  databases: BackupDatabaseEntry[];
  deletedAt: Date | null;
  deletedReason: string | null;
}

export interface NewBackup {
  set: string;
  bucket: string;
  key: string;
  takenAt: Date;
  size: number;
  sha256: string;
  verified: boolean;
  databases: BackupDatabaseEntry[];
  queue: string | null;
  jobId: string | null;
}

const q = (db: Db | Queryable) => ('pool' in db ? db.pool : db);

/** Idempotent on (bucket, key): a retry that rewrote the same archive updates its row. */
export async function recordBackup(db: Db | Queryable, b: NewBackup): Promise<number> {
  const { rows } = await q(db).query(
    `INSERT INTO backups (set_name, bucket, key, taken_at, size, sha256, status, verified, databases, queue, job_id)
     VALUES ($1, $2, $3, $4, $5, $6, 'completed', $7, $8::jsonb, $9, $10)
     ON CONFLICT (bucket, key) DO UPDATE
       SET size = EXCLUDED.size, sha256 = EXCLUDED.sha256, status = 'completed', verified = EXCLUDED.verified,
           databases = EXCLUDED.databases, queue = EXCLUDED.queue, job_id = EXCLUDED.job_id,
           deleted_at = NULL, deleted_reason = NULL
     RETURNING id`,
    [b.set, b.bucket, b.key, b.takenAt, b.size, b.sha256, b.verified, JSON.stringify(b.databases), b.queue, b.jobId],
  );
  return Number(rows[0].id);
}

function toRow(r: Record<string, unknown>): BackupRow {
  const takenAt = r.taken_at as Date;
  return {
    id: Number(r.id),
    set: r.set_name as string,
    bucket: r.bucket as string,
    key: r.key as string,
    takenAt,
    createdAt: takenAt,
    size: Number(r.size),
    sha256: r.sha256 as string,
    status: r.status as BackupRow['status'],
    verified: r.verified as boolean,
    databases: r.databases as BackupDatabaseEntry[],
    deletedAt: (r.deleted_at as Date | null) ?? null,
    deletedReason: (r.deleted_reason as string | null) ?? null,
  };
}

/** Every set's backups (or one set's), newest first, without deleted ones. */
export async function listAllBackups(db: Db | Queryable, options: { set?: string } = {}): Promise<BackupRow[]> {
  const { rows } = await q(db).query(
    `SELECT * FROM backups WHERE status <> 'deleted' AND ($1::text IS NULL OR set_name = $1) ORDER BY taken_at DESC, key DESC`,
    [options.set ?? null],
  );
  return rows.map(toRow);
}

/** A set's backups, newest first; deleted ones only with `includeDeleted`. */
export async function listBackups(db: Db | Queryable, set: string, options: { includeDeleted?: boolean } = {}): Promise<BackupRow[]> {
  const { rows } = await q(db).query(
    `SELECT * FROM backups WHERE set_name = $1 ${options.includeDeleted ? '' : "AND status <> 'deleted'"} ORDER BY taken_at DESC, key DESC`,
    [set],
  );
  return rows.map(toRow);
}

export async function getBackupByKey(db: Db | Queryable, bucket: string, key: string): Promise<BackupRow | null> {
  const { rows } = await q(db).query('SELECT * FROM backups WHERE bucket = $1 AND key = $2', [bucket, key]);
  return rows[0] ? toRow(rows[0]) : null;
}

export async function markBackupDeleted(db: Db | Queryable, id: number, reason: string): Promise<void> {
  await q(db).query(`UPDATE backups SET status = 'deleted', deleted_at = now(), deleted_reason = $2 WHERE id = $1`, [id, reason]);
}
