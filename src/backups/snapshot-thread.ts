/**
 * The body of the SQLite snapshot thread (started by snapshot.ts): `VACUUM INTO` a copy of one
 * database, `PRAGMA quick_check` on the copy, and post the outcome back.
 *
 * This file is a thread entry point, loaded by Node directly: as .ts under tsx and vitest (Node
 * strips the types, so only erasable syntax here), as .js from dist/. So it imports nothing but
 * `node:` builtins and packages (better-sqlite3): a relative import would need a `.ts` specifier
 * in one case and `.js` in the other. The message types are exported for snapshot.ts (`import
 * type`, erased at run time).
 */
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';

export interface SnapshotRequest {
  source: string;
  dest: string;
}

/** What the thread posts back: the snapshot's quick_check problems ([] when ok), or where it failed. */
export type SnapshotReply = { ok: true; problems: string[] } | { ok: false; stage: 'open' | 'snapshot' | 'check'; message: string };

function snapshot({ source, dest }: SnapshotRequest): SnapshotReply {
  let stage: 'open' | 'snapshot' | 'check' = 'open';
  try {
    const src = new Database(source, { readonly: true, fileMustExist: true });
    stage = 'snapshot';
    try {
      src.pragma('busy_timeout = 10000');
      src.prepare('VACUUM INTO ?').run(dest);
    } finally {
      src.close();
    }
    stage = 'check';
    const snap = new Database(dest, { readonly: true, fileMustExist: true });
    try {
      const rows = snap.pragma('quick_check') as Record<string, string>[];
      const messages = rows.map((r) => Object.values(r)[0] ?? '');
      return { ok: true, problems: messages.length === 1 && messages[0] === 'ok' ? [] : messages };
    } finally {
      snap.close();
    }
  } catch (err) {
    return { ok: false, stage, message: String((err as Error | undefined)?.message ?? err) };
  }
}

if (parentPort) parentPort.postMessage(snapshot(workerData as SnapshotRequest));
