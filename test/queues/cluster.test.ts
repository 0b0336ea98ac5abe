/**
 * What only Redis Cluster has: the slot layout (one hash tag per queue, or the prefix's own),
 * refusing a layout that splits a queue over slots, cluster settings, and Stowage's own multi-key
 * script (failure ingestion) on a real 3-master + 3-replica cluster.
 */
import { type Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import type { Db } from '../../src/db/pool.js';
import { failureKeys, recordFailures, startFailureWriter } from '../../src/failures/ingest.js';
import { failureMetrics } from '../../src/failures/metrics.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { createProducer } from '../../src/producers/index.js';
import {
  assertRedisReachable,
  createRedis,
  JOB_KINDS,
  openDeadLetterQueue,
  openMaintenanceQueue,
  openQueueByName,
  MAINTENANCE_QUEUE,
  QUEUE_NAMES,
} from '../../src/queues/index.js';
import { migratedDb } from '../helpers/fleet.js';
import { isolate, REDIS_URL } from '../helpers/isolation.js';
import { type RedisCluster, startRedisCluster } from '../helpers/redis-cluster.js';

let cluster: RedisCluster;
let redis: Cluster;

beforeAll(async () => {
  cluster = await startRedisCluster();
  redis = createRedis({ redisUrl: REDIS_URL, redisClusterNodes: cluster.nodes.slice(0, 1) }) as unknown as Cluster;
});
afterAll(async () => {
  redis?.disconnect();
  await cluster?.stop();
});

/** Every key under `prefix` on every master, with its slot. */
async function keysUnder(prefix: string): Promise<{ key: string; slot: number }[]> {
  const out: { key: string; slot: number }[] = [];
  for (const node of redis.nodes('master')) {
    let cursor = '0';
    do {
      const [next, keys] = await node.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      for (const key of keys) out.push({ key, slot: Number(await node.call('CLUSTER', 'KEYSLOT', key)) });
    } while (cursor !== '0');
  }
  return out;
}

describe('slot layout', () => {
  it('a plain prefix gets one hash tag per queue: each queue in one slot, the queues over several masters', async () => {
    const iso = isolate('clslots', { name: 'cluster', cluster });
    const config = iso.config();
    const producer = createProducer(config);
    try {
      for (const kind of JOB_KINDS) {
        // Delayed: it stays in Redis (wait, delayed, meta, events, id, job hash) for the count.
        await producer.queue(kind).add(kind, {} as never, { jobId: `probe-${kind}`, delay: 60_000 });
      }
      const keys = await keysUnder(`${iso.prefix}:`);
      const byQueue = new Map<string, Set<number>>();
      for (const { key, slot } of keys) {
        const queue = /^[^:]+:\{([^}]+)\}:/.exec(key)?.[1];
        expect(queue, `${key} carries a queue's hash tag`).toBeDefined();
        byQueue.set(queue!, (byQueue.get(queue!) ?? new Set()).add(slot));
      }
      expect([...byQueue.keys()].sort()).toEqual([...JOB_KINDS].sort());
      for (const [queue, slots] of byQueue) expect(slots.size, `${queue}'s keys in one slot`).toBe(1);
      // Spread: the five queues' slots are served by more than one master.
      const masters = new Set(await Promise.all([...byQueue.values()].map((s) => cluster.masterOf([...s][0]!))));
      expect(masters.size).toBeGreaterThan(1);
    } finally {
      await producer.close();
    }
  });

  it('a prefix with its own {tag} is honoured: every queue in that one slot', async () => {
    const iso = isolate('cltag', { name: 'cluster', cluster });
    const prefix = `{${iso.prefix}}`;
    // The file's env sets STOWAGE_PREFIX, which wins over a config override.
    const producer = createProducer({ ...iso.config(), prefix });
    try {
      for (const kind of ['export', 'backup'] as const) await producer.queue(kind).add(kind, {} as never, { delay: 60_000 });
      const keys = await keysUnder(`${prefix}:`);
      expect(keys.length).toBeGreaterThan(4);
      expect(new Set(keys.map((k) => k.slot)).size).toBe(1);
      expect(producer.queue('export').opts.prefix).toBe(prefix);
    } finally {
      await producer.close();
    }
  });

  it('refuses, naming the fix, a prefix that would spread one queue over several slots', () => {
    for (const prefix of ['stow{age', '{}stowage', 'stow}age']) {
      const at = { connection: redis as never, prefix };
      expect(() => openQueueByName('export', at), prefix).toThrow(
        `STOWAGE_PREFIX "${prefix}" would spread the keys of queue "export" over many Redis Cluster slots`,
      );
      expect(() => openQueueByName('export', at)).toThrow(/use a plain prefix .* or one with a whole tag, e\.g\. "\{stowage\}"/);
    }
    // On one Redis slots do not exist: the same prefix is only a name.
    expect(() => loadConfig({ STOWAGE_PREFIX: 'stow{age' })).not.toThrow();
  });

  it('opens every queue, dead-letter and maintenance included, under its own tag', async () => {
    const at = { connection: redis as never, prefix: 'p' };
    const queues = [...JOB_KINDS.map((k) => openQueueByName(k, at)), openDeadLetterQueue(at), openMaintenanceQueue(at)];
    try {
      expect(queues.map((q) => q.opts.prefix).sort()).toEqual([...QUEUE_NAMES, MAINTENANCE_QUEUE].map((n) => `p:{${n}}`).sort());
    } finally {
      await Promise.all(queues.map((q) => q.close()));
    }
  });
});

describe('cluster settings', () => {
  it('REDIS_CLUSTER_NODES: comma-separated host:port, each checked', () => {
    expect(loadConfig({ REDIS_CLUSTER_NODES: ' redis-0:6379, [::1]:7000 ' }).redisClusterNodes).toEqual(['redis-0:6379', '[::1]:7000']);
    expect(loadConfig({}).redisClusterNodes).toBeUndefined();
    expect(() => loadConfig({ REDIS_CLUSTER_NODES: 'redis-0:6379,redis-1' })).toThrow(/REDIS_CLUSTER_NODES.*each node is host:port/);
  });

  it('refuses a REDIS_URL database other than 0, which a cluster does not have', () => {
    expect(() => createRedis({ redisUrl: 'redis://127.0.0.1:6379/2', redisClusterNodes: cluster.nodes })).toThrow(
      'REDIS_URL selects database 2; Redis Cluster has only database 0',
    );
  });

  it("REDIS_URL's user and password reach every node: queues on every master work, a wrong password is refused", async () => {
    // A user that exists only with this password, on every node (ACLs are per node).
    for (const n of cluster.all) {
      const node = new Redis({ host: '127.0.0.1', port: n.port });
      await node.call('ACL', 'SETUSER', 'stowage', 'on', '>s3cret', '~*', '&*', '+@all');
      node.disconnect();
    }
    const iso = isolate('clauth', { name: 'cluster', cluster });
    const good = createProducer(iso.config({ redisUrl: 'redis://stowage:s3cret@127.0.0.1:1' }));
    try {
      // Five queues over the three masters: every node connection authenticated.
      for (const kind of JOB_KINDS) await good.queue(kind).add(kind, {} as never, { delay: 60_000 });
      expect(await good.queue('export').getDelayedCount()).toBe(1);
    } finally {
      await good.close();
    }
    const bad = createRedis(
      { redisUrl: 'redis://stowage:wrong@127.0.0.1:1', redisClusterNodes: cluster.nodes },
      { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0, log: { warn: () => {}, info: () => {} } },
    );
    try {
      await expect(bad.connect().then(() => bad.ping())).rejects.toThrow();
    } finally {
      bad.disconnect();
    }
    await iso.cleanup();
  });

  it('the CLI reachability check names the cluster when no seed node answers, and passes when one does', async () => {
    await expect(assertRedisReachable({ redisUrl: REDIS_URL, redisClusterNodes: cluster.nodes })).resolves.toBeUndefined();
    await expect(assertRedisReachable({ redisUrl: REDIS_URL, redisClusterNodes: ['127.0.0.1:1'] }, 1_000)).rejects.toThrow(
      /^Redis at cluster 127\.0\.0\.1:1 is unreachable/,
    );
  });
});

describe('failure ingestion on the cluster', () => {
  let db: Db;
  afterAll(async () => {
    await db?.close();
  });

  it('moves accepted failures to Postgres with its three-key script (one hash tag for the three keys)', async () => {
    const iso = isolate('clfail', { name: 'cluster', cluster });
    const config = iso.config();
    db = await migratedDb(config);
    const fm = failureMetrics(createMetrics({ defaults: false }).registry);
    const pending = failureKeys.pending(config.prefix, true);
    expect(pending).toBe(`${config.prefix}:stowage:{failures}:pending`);
    const batch = Array.from({ length: 25 }, (_, i) => ({ error_code: 'E_TIMEOUT', message: `call ${i} timed out` }));
    const { ids } = await recordFailures({ redis: redis as never, config, metrics: fm }, 'acme', batch);
    expect(await redis.llen(pending)).toBe(25);
    const writer = startFailureWriter({
      redis: redis as never,
      db,
      config,
      logger: createLogger({ level: 'silent' }),
      metrics: fm,
      idleMs: 20,
    });
    try {
      const deadline = Date.now() + 15_000;
      while ((await redis.llen(pending)) > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    } finally {
      await writer.close();
    }
    expect(await redis.llen(pending)).toBe(0);
    const rows = await db.pool.query('SELECT count(*)::int AS n FROM failure_matches WHERE id = ANY($1)', [ids]);
    expect(rows.rows[0].n).toBe(25);
    await iso.cleanup();
  });
});
