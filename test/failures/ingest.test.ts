/**
 * Ingestion durability against real Redis and Postgres: failures accepted while the writer's
 * Postgres is unreachable (a closed port) all wait in Redis, none is dropped, and once a writer
 * reaches Postgres every one of them is persisted exactly once. A record Postgres refuses for its
 * data is the only thing counted as dropped.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../../src/db/migrate.js';
import { createDb, type Db } from '../../src/db/pool.js';
import { failureKeys, recordFailures, startFailureWriter } from '../../src/failures/ingest.js';
import { failureMetrics } from '../../src/failures/metrics.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { createRedis } from '../../src/queues/index.js';
import { isolate } from '../helpers/isolation.js';
import { closedPort } from '../http/harness.js';

const iso = isolate('failureingest');
const config = iso.config({ failures: { writerBatchSize: 50 } });
const logger = createLogger({ level: 'silent' });
const redis = createRedis(config.redisUrl);
let db: Db;

async function until(check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
}

const dropped = async (registry: ReturnType<typeof createMetrics>['registry']) =>
  (await registry.getSingleMetric('failure_persist_dropped_total')!.get()).values[0]?.value ?? 0;

beforeAll(async () => {
  await migrate(config);
  db = createDb(config, { max: 2 });
});

afterAll(async () => {
  await db?.close();
  redis.disconnect();
  await iso.cleanup();
});

describe('failure ingestion', () => {
  it('keeps every failure accepted while Postgres is down and persists them all once it is back', async () => {
    const metrics = createMetrics({ defaults: false });
    const fm = failureMetrics(metrics.registry);
    const deadDb = createDb({ ...config, databaseUrl: `postgres://postgres@127.0.0.1:${await closedPort()}/postgres` }, { max: 1 });
    const down = startFailureWriter({ redis, db: deadDb, config, logger, metrics: fm, idleMs: 20, maxBackoffMs: 100 });
    const ids: string[] = [];
    try {
      // 7 batches of 30 and 10 single failures, from two tenants, while the writer cannot write.
      for (let b = 0; b < 7; b++) {
        const batch = Array.from({ length: 30 }, (_, i) => ({
          error_code: 'E_TIMEOUT',
          message: `call ${b}-${i} timed out`,
          category: 'net',
        }));
        ids.push(...(await recordFailures({ redis, config, metrics: fm }, b % 2 ? 'acme' : 'globex', batch)).ids);
      }
      for (let i = 0; i < 10; i++)
        ids.push(...(await recordFailures({ redis, config, metrics: fm }, 'acme', { error_code: 'E_ONE', message: `single ${i}` })).ids);
      // Give the writer time to fail a few rounds: nothing is lost or dropped meanwhile.
      await new Promise((r) => setTimeout(r, 600));
      expect(await redis.llen(failureKeys.pending(config.prefix))).toBe(220);
      expect(await dropped(metrics.registry)).toBe(0);
    } finally {
      await down.close();
      await deadDb.close();
    }
    expect((await db.pool.query('SELECT count(*)::int AS n FROM failure_matches')).rows[0].n).toBe(0);

    const back = startFailureWriter({ redis, db, config, logger, metrics: fm, idleMs: 20 });
    try {
      await until(async () => (await redis.llen(failureKeys.pending(config.prefix))) === 0, 15_000);
    } finally {
      await back.close();
    }
    const { rows } = await db.pool.query('SELECT id FROM failure_matches ORDER BY id');
    expect(rows.map((r: { id: string }) => r.id)).toEqual([...ids].sort());
    expect(await dropped(metrics.registry)).toBe(0);
  });

  it('counts only a record Postgres refuses for its data as dropped, and keeps it in the dead list', async () => {
    const metrics = createMetrics({ defaults: false });
    const fm = failureMetrics(metrics.registry);
    const before = (await db.pool.query('SELECT count(*)::int AS n FROM failure_matches')).rows[0].n as number;
    const { ids } = await recordFailures({ redis, config, metrics: fm }, 'acme', [{ error_code: 'E1', message: 'fine 1' }]);
    // What an older producer version might have written: a NUL, which Postgres text refuses (22021).
    await redis.rpush(
      failureKeys.pending(config.prefix),
      JSON.stringify({
        id: '00000000-0000-4000-8000-000000000001',
        tenantId: 'acme',
        errorCode: 'E1',
        category: null,
        message: 'bad\u0000',
        signature: 'bad',
        catalogEntry: null,
        recoveryMode: null,
        recoverySucceeded: null,
        createdAt: '2026-01-01T00:00:00Z',
      }),
      'not json',
    );
    const more = await recordFailures({ redis, config, metrics: fm }, 'acme', [{ error_code: 'E1', message: 'fine 2' }]);
    const writer = startFailureWriter({ redis, db, config, logger, metrics: fm, idleMs: 20 });
    try {
      await writer.flush();
    } finally {
      await writer.close();
    }
    expect(await redis.llen(failureKeys.pending(config.prefix))).toBe(0);
    const { rows } = await db.pool.query('SELECT id FROM failure_matches WHERE id = ANY($1::uuid[])', [[...ids, ...more.ids]]);
    expect(rows).toHaveLength(2);
    expect((await db.pool.query('SELECT count(*)::int AS n FROM failure_matches')).rows[0].n).toBe(before + 2);
    expect(await dropped(metrics.registry)).toBe(2);
    expect(await redis.llen(failureKeys.dead(config.prefix))).toBe(2);
  });

  it('refuses invalid failures whole, naming the field, and accepts nothing of them', async () => {
    const len = await redis.llen(failureKeys.pending(config.prefix));
    await expect(recordFailures({ redis, config }, 'acme', [{ error_code: 'E', message: 'ok' }, { error_code: 'E' }])).rejects.toThrow(
      /1\.message/,
    );
    await expect(recordFailures({ redis, config }, 'acme', { error_code: 'E', message: 'ok', occurred_at: 'yesterday' })).rejects.toThrow(
      /occurred_at/,
    );
    await expect(recordFailures({ redis, config }, 'acme', { error_code: 'E', message: 'nul \u0000' })).rejects.toThrow(
      /message: must not contain NUL/,
    );
    expect(await redis.llen(failureKeys.pending(config.prefix))).toBe(len);
  });
});
