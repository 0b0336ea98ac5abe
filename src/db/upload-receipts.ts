/** SQL for upload_receipts: one row per object written, so every byte is accounted for. */
import type pg from 'pg';
import type { Db } from './pool.js';

/** A pool or a client inside a transaction. */
export type Queryable = Pick<pg.Pool, 'query'> | Pick<pg.PoolClient, 'query'>;

export interface UploadReceipt {
  bucket: string;
  key: string;
  size: number;
  sha256: string;
  etag: string | null;
  status: string;
  queue: string | null;
  jobId: string | null;
}

/** Idempotent: writing the same object again (a rerun) updates its one row. */
export async function upsertUploadReceipt(db: Queryable, r: UploadReceipt): Promise<void> {
  await db.query(
    `INSERT INTO upload_receipts (bucket, key, size, sha256, etag, status, queue, job_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (bucket, key) DO UPDATE
       SET size = EXCLUDED.size, sha256 = EXCLUDED.sha256, etag = EXCLUDED.etag, status = EXCLUDED.status,
           queue = EXCLUDED.queue, job_id = EXCLUDED.job_id, updated_at = now()`,
    [r.bucket, r.key, r.size, r.sha256, r.etag, r.status, r.queue, r.jobId],
  );
}

export async function getUploadReceipt(
  db: Db | Queryable,
  bucket: string,
  key: string,
): Promise<(UploadReceipt & { createdAt: Date; updatedAt: Date }) | null> {
  const q = 'pool' in db ? db.pool : db;
  const { rows } = await q.query(
    `SELECT bucket, key, size, sha256, etag, status, queue, job_id, created_at, updated_at
       FROM upload_receipts WHERE bucket = $1 AND key = $2`,
    [bucket, key],
  );
  const r = rows[0];
  if (!r) return null;
  return {
    bucket: r.bucket,
    key: r.key,
    size: Number(r.size),
    sha256: r.sha256,
    etag: r.etag,
    status: r.status,
    queue: r.queue,
    jobId: r.job_id,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}
