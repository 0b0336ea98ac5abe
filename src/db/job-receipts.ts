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

export async function getJobReceipt(db: Db, queue: string, jobId: string): Promise<(JobReceipt & { finishedAt: Date }) | null> {
  const { rows } = await db.pool.query(
    `SELECT queue, job_id, name, status, attempts, result, error, finished_at FROM job_receipts WHERE queue = $1 AND job_id = $2`,
    [queue, jobId],
  );
  const r = rows[0];
  if (!r) return null;
  return { queue: r.queue, jobId: r.job_id, name: r.name, status: r.status, attempts: r.attempts, result: r.result, error: r.error, finishedAt: r.finished_at };
}

export interface ReceiptWriter {
  /** Resolves once the receipt is committed (in a batch with others written meanwhile). */
  write(receipt: JobReceipt): Promise<void>;
  /** Commit whatever is buffered. */
  flush(): Promise<void>;
}

/**
 * Group commit: receipts written while a batch is being committed go together in the next one
 * multi-row INSERT. Each caller still waits for its own commit, so a completed job never lacks its
 * receipt, but N concurrent jobs cost one round trip instead of N.
 */
export function createReceiptWriter(db: Db, options: { maxBatch?: number } = {}): ReceiptWriter {
  const maxBatch = options.maxBatch ?? 500;
  let buffer: { r: JobReceipt; resolve: () => void; reject: (e: unknown) => void }[] = [];
  let inFlight: Promise<void> | null = null;

  const commit = async (batch: typeof buffer) => {
    // One statement may not update the same row twice: keep the last receipt per job.
    const last = new Map<string, JobReceipt>();
    for (const { r } of batch) last.set(`${r.queue}\u0000${r.jobId}`, r);
    const rows = [...last.values()];
    const values: unknown[] = [];
    const tuples = rows.map((r, i) => {
      values.push(r.queue, r.jobId, r.name, r.status, r.attempts, r.result === null || r.result === undefined ? null : JSON.stringify(r.result), r.error);
      const o = i * 7;
      return `($${o + 1}, $${o + 2}, $${o + 3}, $${o + 4}, $${o + 5}, $${o + 6}::jsonb, $${o + 7}, now())`;
    });
    await db.pool.query(
      `INSERT INTO job_receipts (queue, job_id, name, status, attempts, result, error, finished_at)
       VALUES ${tuples.join(', ')}
       ON CONFLICT (queue, job_id) DO UPDATE
         SET name = EXCLUDED.name, status = EXCLUDED.status, attempts = EXCLUDED.attempts,
             result = EXCLUDED.result, error = EXCLUDED.error, finished_at = now()`,
      values,
    );
  };

  const pump = (): Promise<void> => {
    if (inFlight || buffer.length === 0) return inFlight ?? Promise.resolve();
    const batch = buffer.splice(0, maxBatch);
    inFlight = commit(batch).then(
      () => batch.forEach((b) => b.resolve()),
      (err: unknown) => batch.forEach((b) => b.reject(err)),
    ).finally(() => {
      inFlight = null;
      void pump();
    });
    return inFlight;
  };

  return {
    write(r) {
      return new Promise<void>((resolve, reject) => {
        buffer.push({ r, resolve, reject });
        // Start now if idle; otherwise this receipt rides the next batch when the current commits.
        if (!inFlight) queueMicrotask(() => void pump());
      });
    },
    async flush() {
      while (inFlight || buffer.length) await pump();
    },
  };
}
