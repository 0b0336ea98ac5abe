/** Numbered SQL migrations in migrations/, applied with node-pg-migrate. Idempotent. */
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { runner } from 'node-pg-migrate';
import type { Config } from '../config.js';
import { FOREIGN_ERROR_TEXT } from '../foreign-errors.js';
import { retry } from '../retry.js';

export const MIGRATIONS_DIR = fileURLToPath(new URL('../../migrations', import.meta.url));

/**
 * node-pg-migrate's advisory lock, one per schema: its default is one value for the whole server,
 * so migrating two schemas at once (two deployments on one Postgres, parallel test files) failed
 * with "Another migration is already running".
 */
function lockValueFor(schema: string): number {
  return createHash('sha256').update(`stowage-migrate:${schema}`).digest().readInt32BE(0);
}

/** How long a migration waits for another one of the same schema to finish. */
const LOCK_WAIT_MS = 120_000;

export async function migrate(
  config: Pick<Config, 'databaseUrl' | 'databaseSchema'>,
  options: { log?: (msg: string) => void } = {},
): Promise<string[]> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  // Polled every 200–500 ms; the condition below ends it (any other error, or the deadline).
  return retry(() => migrateOnce(config, options), {
    maxAttempts: Number.POSITIVE_INFINITY,
    delayMs: 500,
    factor: 1,
    jitter: 0.6,
    retryable: (err) => {
      // The lock is tried, not waited for: wait here, then find the other run's work done.
      if (!FOREIGN_ERROR_TEXT.pgMigrateLocked.test((err as Error).message) || Date.now() > deadline) throw err;
      return true;
    },
  });
}

async function migrateOnce(
  config: Pick<Config, 'databaseUrl' | 'databaseSchema'>,
  options: { log?: (msg: string) => void },
): Promise<string[]> {
  const applied = await runner({
    databaseUrl: config.databaseUrl,
    dir: MIGRATIONS_DIR,
    direction: 'up',
    migrationsTable: 'stowage_migrations',
    schema: config.databaseSchema,
    createSchema: true,
    checkOrder: true,
    // An advisory lock keeps concurrent `stowage migrate` runs of one schema from racing.
    noLock: false,
    lockValue: lockValueFor(config.databaseSchema),
    log: options.log ?? (() => {}),
  });
  return applied.map((m) => m.name);
}
