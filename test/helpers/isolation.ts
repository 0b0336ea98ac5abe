/**
 * Per-test-file isolation: a unique BullMQ prefix, Postgres schema and bucket name, so test files
 * run in parallel against the same Redis and Postgres without seeing each other.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import pg from 'pg';
import { loadConfig, type Config, type ConfigInput } from '../../src/config.js';

export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
export const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export interface Isolation {
  /** Short unique token, e.g. `t3f9a1c`. */
  id: string;
  prefix: string;
  schema: string;
  bucket: string;
  /** A config for this test file, with `overrides` applied. Reads no process env. */
  config(overrides?: ConfigInput | Record<string, unknown>): Config;
  /** Remove every Redis key under the prefix and drop the schema. */
  cleanup(): Promise<void>;
}

export function isolate(label: string): Isolation {
  const id = `${label
    .replace(/[^a-z0-9]/gi, '')
    .toLowerCase()
    .slice(0, 12)}${randomBytes(3).toString('hex')}`;
  const prefix = `test-${id}`;
  const schema = `t_${id}`;
  const bucket = `b-${id}`;
  return {
    id,
    prefix,
    schema,
    bucket,
    config: (overrides = {}) =>
      loadConfig(
        { REDIS_URL, DATABASE_URL, STOWAGE_PREFIX: prefix, STOWAGE_DB_SCHEMA: schema, LOG_LEVEL: process.env.LOG_LEVEL ?? 'silent' },
        overrides,
      ),
    async cleanup() {
      const redis = new Redis(REDIS_URL);
      try {
        let cursor = '0';
        do {
          const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
          cursor = next;
          if (keys.length) await redis.del(...keys);
        } while (cursor !== '0');
      } finally {
        redis.disconnect();
      }
      const client = new pg.Client({ connectionString: DATABASE_URL });
      await client.connect();
      try {
        await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      } finally {
        await client.end();
      }
    },
  };
}
