/** SQL for job_receipts: one row per finished job (completed or parked). */
import type { Db } from './pool.js';

export interface JobReceipt {
  queue: string;
  jobId: string;
  name: string;
  status: 'completed' | 'parked';
  attempts: number;
  result: unknown;
  error: string | null;
}

/** Idempotent: a job that runs again (redrive, crash after the write) updates its row. */
export async function insertJobReceipt(db: Db, r: JobReceipt): Promise<void> {
  await db.pool.query(
    `INSERT INTO job_receipts (queue, job_id, name, status, attempts, result, error, finished_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, now())
     ON CONFLICT (queue, job_id) DO UPDATE
       SET name = EXCLUDED.name, status = EXCLUDED.status, attempts = EXCLUDED.attempts,
           result = EXCLUDED.result, error = EXCLUDED.error, finished_at = now()`,
    [r.queue, r.jobId, r.name, r.status, r.attempts, r.result === null || r.result === undefined ? null : JSON.stringify(r.result), r.error],
  );
}

export async function getJobReceipt(db: Db, queue: string, jobId: string): Promise<(JobReceipt & { finishedAt: Date }) | null> {
  const { rows } = await db.pool.query(
    `SELECT queue, job_id, name, status, attempts, result, error, finished_at FROM job_receipts WHERE queue = $1 AND job_id = $2`,
    [queue, jobId],
  );
  const r = rows[0];
  if (!r) return null;
  return { queue: r.queue, jobId: r.job_id, name: r.name, status: r.status, attempts: r.attempts, result: r.result, error: r.error, finishedAt: r.finished_at };
}
