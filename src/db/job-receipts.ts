/** SQL for job_receipts: one row per finished job (completed or parked). */
import { retry } from '../retry.js';
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
  return {
    queue: r.queue,
    jobId: r.job_id,
    name: r.name,
    status: r.status,
    attempts: r.attempts,
    result: r.result,
    error: r.error,
    finishedAt: r.finished_at,
  };
}

export interface ReceiptWriter {
  /**
   * Resolves once the receipt is committed (in a batch with others written meanwhile). While
   * Postgres is unreachable it waits: the batch is kept and retried with backoff. It rejects only
   * when Postgres refuses the rows themselves (SQLSTATE class 22/23), which no retry can fix.
   */
  write(receipt: JobReceipt): Promise<void>;
  /**
   * Commit whatever is buffered, waiting at most `timeoutMs` (default: until done). Resolves with
   * the number of receipts still unwritten (0 when everything is in Postgres).
   */
  flush(timeoutMs?: number): Promise<number>;
  /** Receipts waiting to be committed. */
  readonly pending: number;
}

/** SQLSTATE classes 22 (data exception) and 23 (integrity constraint): the rows, not the database, are at fault. */
function isDataError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^(22|23)/.test(code);
}

/**
 * Group commit: receipts written while a batch is being committed go together in the next one
 * multi-row INSERT. Each caller still waits for its own commit, so a completed job never lacks its
 * receipt, but N concurrent jobs cost one round trip instead of N.
 *
 * Postgres away (refused, reset, timed out): the batch is retried with exponential backoff (from
 * `retryBaseMs`, 200 ms, doubling to `maxBackoffMs`, 10 s; src/retry.ts) until Postgres is back, and
 * receipts written meanwhile ride the batches after it, so receipts wait rather than vanish.
 * They live in this process's memory meanwhile: a process killed during an outage loses its
 * unwritten audit rows (the job itself, completed or parked, is safe in Redis).
 */
export function createReceiptWriter(
  db: Db,
  options: {
    maxBatch?: number;
    retryBaseMs?: number;
    maxBackoffMs?: number;
    onRetry?: (err: unknown, pending: number, retryInMs: number) => void;
  } = {},
): ReceiptWriter {
  const maxBatch = options.maxBatch ?? 500;
  const retryBaseMs = options.retryBaseMs ?? 200;
  const maxBackoffMs = options.maxBackoffMs ?? 10_000;
  type Entry = { r: JobReceipt; resolve: () => void; reject: (e: unknown) => void };
  let buffer: Entry[] = [];
  let draining: Promise<void> | null = null;
  let inFlightCount = 0;
  // Aborted by flush(): it cuts the current backoff short ("try now").
  let wake: AbortController | null = null;
  let idleWaiters: (() => void)[] = [];

  const commit = async (batch: Entry[]) => {
    // One statement may not update the same row twice: keep the last receipt per job.
    const last = new Map<string, JobReceipt>();
    for (const { r } of batch) last.set(`${r.queue}\u0000${r.jobId}`, r);
    const rows = [...last.values()];
    const values: unknown[] = [];
    const tuples = rows.map((r, i) => {
      values.push(
        r.queue,
        r.jobId,
        r.name,
        r.status,
        r.attempts,
        r.result === null || r.result === undefined ? null : JSON.stringify(r.result),
        r.error,
      );
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

  const notifyIdle = () => {
    if (draining || buffer.length) return;
    const waiters = idleWaiters;
    idleWaiters = [];
    waiters.forEach((w) => w());
  };

  /** Commit batches until the buffer is empty; a batch Postgres cannot take now waits and retries. */
  const drain = async () => {
    while (buffer.length) {
      const batch = buffer.splice(0, maxBatch);
      inFlightCount = batch.length;
      const nap = new AbortController();
      wake = nap;
      try {
        // Postgres is away: retryBaseMs doubling to maxBackoffMs, until it is back.
        await retry(() => commit(batch), {
          maxAttempts: Number.POSITIVE_INFINITY,
          delayMs: retryBaseMs,
          maxDelayMs: maxBackoffMs,
          jitter: 0,
          signal: nap.signal,
          // Never the reason a process stays up; close() flushes with a bound.
          ref: false,
          retryable: (err) => !isDataError(err),
          onRetry: ({ error, delayMs }) => options.onRetry?.(error, buffer.length + batch.length, delayMs),
        });
        for (const b of batch) b.resolve();
      } catch (err) {
        // flush() cut the wait short: the batch goes back to the head, in order, and is tried now.
        if (nap.signal.aborted && !isDataError(err)) buffer = [...batch, ...buffer];
        else for (const b of batch) b.reject(err);
      } finally {
        inFlightCount = 0;
      }
    }
  };

  const pump = (): void => {
    if (draining) return;
    if (!buffer.length) {
      notifyIdle();
      return;
    }
    draining = drain().finally(() => {
      draining = null;
      pump();
    });
  };

  return {
    write(r) {
      return new Promise<void>((resolve, reject) => {
        buffer.push({ r, resolve, reject });
        // Start now if idle; otherwise this receipt rides the next batch when the current commits.
        if (!draining) queueMicrotask(pump);
      });
    },
    async flush(timeoutMs) {
      // Flushing means "try now": skip the rest of the backoff.
      wake?.abort();
      const drained = new Promise<void>((resolve) => idleWaiters.push(resolve));
      pump();
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        drained,
        ...(timeoutMs === undefined ? [] : [new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)))]),
      ]);
      clearTimeout(timer);
      return buffer.length + inFlightCount;
    },
    get pending() {
      return buffer.length + inFlightCount;
    },
  };
}
