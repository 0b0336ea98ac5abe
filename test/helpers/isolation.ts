/**
 * Per-test-file isolation: a unique BullMQ prefix, Postgres schema and bucket name, so test files
 * run in parallel against the same Redis and Postgres without seeing each other.
 */
import { randomBytes } from 'node:crypto';
import { type Cluster, Redis } from 'ioredis';
import pg from 'pg';
import { loadConfig, type Config, type ConfigInput } from '../../src/config.js';
import { createRedis, queuePrefix } from '../../src/queues/index.js';
import type { RedisVariant } from './redis-cluster.js';

export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
export const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export interface Isolation {
  /** Short unique token, e.g. `t3f9a1c`. */
  id: string;
  prefix: string;
  schema: string;
  bucket: string;
  /** Which Redis: one (REDIS_URL), or the file's cluster (REDIS_CLUSTER_NODES set in config()). */
  redis: RedisVariant;
  /** A config for this test file, with `overrides` applied. Reads no process env. */
  config(overrides?: ConfigInput | Record<string, unknown>): Config;
  /** The BullMQ prefix queue `name` has here (a hash tag per queue on the cluster). */
  queuePrefix(name: string): string;
  /** Remove every Redis key under the prefix and drop the schema. */
  cleanup(): Promise<void>;
}

export function isolate(label: string, redis: RedisVariant = { name: 'single' }): Isolation {
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
    redis,
    config: (overrides = {}) =>
      loadConfig(
        {
          REDIS_URL,
          ...(redis.name === 'cluster' ? { REDIS_CLUSTER_NODES: redis.cluster.nodes.join(',') } : {}),
          DATABASE_URL,
          STOWAGE_PREFIX: prefix,
          STOWAGE_DB_SCHEMA: schema,
          LOG_LEVEL: process.env.LOG_LEVEL ?? 'silent',
        },
        overrides,
      ),
    queuePrefix: (name) => queuePrefix(prefix, name, redis.name === 'cluster'),
    async cleanup() {
      if (redis.name === 'cluster') {
        // Each master holds its own slots: SCAN every one (the cluster itself goes with the file).
        const cluster = createRedis({ redisUrl: REDIS_URL, redisClusterNodes: redis.cluster.nodes }) as unknown as Cluster;
        try {
          await cluster.ping();
          await Promise.all(cluster.nodes('master').map((node) => deleteUnder(node, prefix)));
        } finally {
          cluster.disconnect();
        }
      } else {
        const single = new Redis(REDIS_URL);
        try {
          await deleteUnder(single, prefix);
        } finally {
          single.disconnect();
        }
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

async function deleteUnder(redis: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    // One DEL per key: on a cluster node the keys of one SCAN page sit in many slots.
    for (const key of keys) await redis.del(key);
  } while (cursor !== '0');
}
