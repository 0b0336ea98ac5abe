/**
 * SQL for session-level Postgres advisory locks (no table): taken on one pooled connection and held
 * until released, so the lock dies with the connection and a crashed process cannot leave it behind.
 */
import type { Db } from './pool.js';

/** A lock's key: two int4s, a namespace and the hash of a name (`hashtext`). */
export interface AdvisoryLockKey {
  namespace: number;
  name: string;
}

export interface AdvisoryLock {
  /** Unlock and give the connection back to the pool. Never throws. */
  release(): Promise<void>;
}

/**
 * Try to take the lock without waiting: the held lock, or null when another session holds it.
 * The connection stays checked out until `release()`.
 */
export async function tryAdvisoryLock(db: Db, key: AdvisoryLockKey): Promise<AdvisoryLock | null> {
  const client = await db.pool.connect();
  let locked = false;
  try {
    const { rows } = await client.query('SELECT pg_try_advisory_lock($1::int, hashtext($2)) AS ok', [key.namespace, key.name]);
    locked = rows[0].ok === true;
  } finally {
    if (!locked) client.release();
  }
  if (!locked) return null;
  return {
    async release() {
      await client.query('SELECT pg_advisory_unlock($1::int, hashtext($2))', [key.namespace, key.name]).catch(() => {});
      client.release();
    },
  };
}
