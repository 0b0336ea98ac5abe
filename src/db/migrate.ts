/** Numbered SQL migrations in migrations/, applied with node-pg-migrate. Idempotent. */
import { fileURLToPath } from 'node:url';
import { runner } from 'node-pg-migrate';
import type { Config } from '../config.js';

export const MIGRATIONS_DIR = fileURLToPath(new URL('../../migrations', import.meta.url));

export async function migrate(
  config: Pick<Config, 'databaseUrl' | 'databaseSchema'>,
  options: { log?: (msg: string) => void } = {},
): Promise<string[]> {
  const applied = await runner({
    databaseUrl: config.databaseUrl,
    dir: MIGRATIONS_DIR,
    direction: 'up',
    migrationsTable: 'stowage_migrations',
    schema: config.databaseSchema,
    createSchema: true,
    checkOrder: true,
    // An advisory lock keeps concurrent `stowage migrate` runs from racing.
    noLock: false,
    log: options.log ?? (() => {}),
  });
  return applied.map((m) => m.name);
}
