/**
 * The per-set backup lock: a session-level Postgres advisory lock keyed by the set name, held on
 * one pooled connection for the whole run, so two backups (or prunes) of one set never run at once
 * anywhere in the fleet. The lock dies with the connection, so a crashed worker cannot leave it
 * behind.
 */
import type { Db } from '../db/pool.js';
import { tryAdvisoryLock } from '../db/advisory-locks.js';
import { StowageError } from '../errors.js';

/** The advisory-lock namespace of backup sets (the first of the key's two int4s). */
const LOCK_NAMESPACE = 0x5354_4f57; // 'STOW'

/**
 * Run `fn` holding the set's lock; throws a retryable StowageError when another backup of the set
 * holds it.
 */
export async function withBackupLock<T>(db: Db, set: string, fn: () => Promise<T>): Promise<T> {
  const lock = await tryAdvisoryLock(db, { namespace: LOCK_NAMESPACE, name: `backup:${set}` });
  if (!lock) throw new StowageError('STOWAGE_ERR_BUSY', `another backup of set ${set} is running; will retry`);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}
