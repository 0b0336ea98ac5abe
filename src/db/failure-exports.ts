/** SQL for failure_pattern_exports: the audit trail of aggregation exports, one row per export. */
import type { Db } from './pool.js';
import type { Queryable } from './upload-receipts.js';

export const EXPORT_STATUSES = ['uploaded', 'fallback_local', 'retrying', 'failed'] as const;
export type ExportStatus = (typeof EXPORT_STATUSES)[number];

export interface ExportRecord {
  id: string;
  s3Key: string;
  localPath: string | null;
  uploadedAt: Date | null;
  uploader: string | null;
  sizeBytes: number | null;
  sha256: string | null;
  status: ExportStatus;
  notes: string | null;
  retryCount: number;
  lastRetryAt: Date | null;
  createdAt: Date;
}

const COLUMNS = 'id, s3_key, local_path, uploaded_at, uploader, size_bytes, sha256, status, notes, retry_count, last_retry_at, created_at';

function q(db: Db | Queryable): Queryable {
  return 'pool' in db ? db.pool : db;
}

function toRecord(r: Record<string, unknown>): ExportRecord {
  return {
    id: r.id as string,
    s3Key: r.s3_key as string,
    localPath: (r.local_path as string | null) ?? null,
    uploadedAt: (r.uploaded_at as Date | null) ?? null,
    uploader: (r.uploader as string | null) ?? null,
    sizeBytes: r.size_bytes === null || r.size_bytes === undefined ? null : Number(r.size_bytes),
    sha256: (r.sha256 as string | null) ?? null,
    status: r.status as ExportStatus,
    notes: (r.notes as string | null) ?? null,
    retryCount: r.retry_count as number,
    lastRetryAt: (r.last_retry_at as Date | null) ?? null,
    createdAt: r.created_at as Date,
  };
}

/** A new export about to be uploaded: status `retrying` until its first attempt ends. */
export async function createExport(
  db: Db | Queryable,
  e: { s3Key: string; uploader: string; sizeBytes: number; sha256: string },
): Promise<ExportRecord> {
  const { rows } = await q(db).query(
    `INSERT INTO failure_pattern_exports (s3_key, uploader, size_bytes, sha256, status, uploaded_at)
     VALUES ($1, $2, $3, $4, 'retrying', NULL) RETURNING ${COLUMNS}`,
    [e.s3Key, e.uploader, e.sizeBytes, e.sha256],
  );
  return toRecord(rows[0]);
}

/**
 * Record one attempt's outcome. `retried` counts it in retry_count / last_retry_at (every attempt
 * after an export's first). `uploaded` sets uploaded_at; localPath is where the file now is (null
 * once uploaded).
 */
export async function recordExportAttempt(
  db: Db | Queryable,
  id: string,
  a: { status: ExportStatus; retried: boolean; notes: string; localPath: string | null },
): Promise<ExportRecord | null> {
  const { rows } = await q(db).query(
    `UPDATE failure_pattern_exports
        SET status = $2, notes = $3, local_path = $4,
            retry_count = retry_count + CASE WHEN $5::boolean THEN 1 ELSE 0 END,
            last_retry_at = CASE WHEN $5::boolean THEN now() ELSE last_retry_at END,
            uploaded_at = CASE WHEN $2 = 'uploaded' THEN now() ELSE uploaded_at END
      WHERE id = $1 RETURNING ${COLUMNS}`,
    [id, a.status, a.notes, a.localPath, a.retried],
  );
  return rows[0] ? toRecord(rows[0]) : null;
}

/** Exports waiting in the local fallback directory, oldest first. */
export async function listPendingFallbacks(db: Db | Queryable, limit: number): Promise<ExportRecord[]> {
  const { rows } = await q(db).query(
    `SELECT ${COLUMNS} FROM failure_pattern_exports
      WHERE local_path IS NOT NULL AND status IN ('fallback_local', 'retrying')
      ORDER BY created_at, id LIMIT $1`,
    [limit],
  );
  return rows.map(toRecord);
}

export async function getExport(db: Db | Queryable, id: string): Promise<ExportRecord | null> {
  const { rows } = await q(db).query(`SELECT ${COLUMNS} FROM failure_pattern_exports WHERE id = $1`, [id]);
  return rows[0] ? toRecord(rows[0]) : null;
}
