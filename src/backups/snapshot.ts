/**
 * Consistent snapshots of live SQLite databases (`VACUUM INTO`, run in a worker thread) and the
 * `PRAGMA quick_check` / `integrity_check` of a database file. Used by the backup processor, the
 * restore and the drill.
 */
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { PermanentError, StowageError } from '../errors.js';
import type { SnapshotReply, SnapshotRequest } from './snapshot-thread.js';

/**
 * The thread's module: the .ts source when this module runs as .ts (vitest, tsx: Node strips the
 * types), the compiled .js next to it in dist/.
 */
const SNAPSHOT_THREAD = new URL(import.meta.url.endsWith('.ts') ? './snapshot-thread.ts' : './snapshot-thread.js', import.meta.url);

/**
 * A consistent snapshot of a live SQLite database at `dest` with `VACUUM INTO`, then
 * `PRAGMA quick_check` on the snapshot, off the event loop: VACUUM INTO and quick_check are
 * synchronous in better-sqlite3, and a large database would otherwise block the worker past its
 * BullMQ lock (the job would be taken for stalled). Runs in a worker thread. Throws PermanentError
 * if the source is missing, StowageError if the snapshot is not ok.
 */
export async function snapshotSqliteInThread(source: string, dest: string): Promise<void> {
  const request: SnapshotRequest = { source, dest };
  const reply = await new Promise<SnapshotReply>((resolve, reject) => {
    const worker = new Worker(SNAPSHOT_THREAD, { workerData: request });
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`snapshot thread exited with code ${code}`)));
  });
  if (!reply.ok) {
    if (reply.stage === 'open') throw new PermanentError(`sqlite ${source}: cannot open: ${reply.message}`);
    throw new StowageError('STOWAGE_ERR_INTERNAL', `sqlite ${source}: ${reply.stage} failed: ${reply.message}`);
  }
  if (reply.problems.length) {
    throw new StowageError(
      'STOWAGE_ERR_INTERNAL',
      `sqlite ${source}: snapshot failed quick_check: ${reply.problems.slice(0, 5).join('; ')}`,
    );
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
