/** The PostgreSQL pool. Every connection's search_path is the configured schema. */
import pg from 'pg';
import type { Config } from '../config.js';

export interface Db {
  pool: pg.Pool;
  schema: string;
  close(): Promise<void>;
}

export function createDb(config: Pick<Config, 'databaseUrl' | 'databaseSchema'>, options: { max?: number } = {}): Db {
  const pool = new pg.Pool({
    connectionString: config.databaseUrl,
    max: options.max ?? 10,
    // search_path per connection: tests and tenants of one database each get their own schema.
    options: `-c search_path=${config.databaseSchema},public`,
    connectionTimeoutMillis: 10_000,
    idleTimeoutMillis: 30_000,
  });
  // An idle client's error (server restart) must not crash the process; the pool replaces it.
  pool.on('error', () => {});
  // Nor may a checked-out client's: pg emits 'error' on a Client whose connection drops between
  // queries (a transaction's BEGIN done, the next statement not yet sent), and pg-pool listens
  // only to idle clients, so without this a reset connection killed the worker process (found by
  // the chaos suite's Postgres outage). The next query on that client fails and its job retries;
  // on release the pool discards the broken client.
  pool.on('connect', (client) => {
    client.on('error', () => {});
  });
  return {
    pool,
    schema: config.databaseSchema,
    close: () => pool.end(),
  };
}
