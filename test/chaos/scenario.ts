/**
 * The common set-up of a chaos scenario: an isolated prefix/schema/bucket, a radosgw bucket with
 * the scenario's own credentials behind a fault proxy, a producer and a pool in this process, and a
 * ProcessGroup whose environment points worker processes at all of it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDb, type Db } from '../../src/db/pool.js';
import { migrate } from '../../src/db/migrate.js';
import { createProducer, type Producer } from '../../src/producers/index.js';
import { DATABASE_URL, isolate, REDIS_URL, type Isolation } from '../helpers/isolation.js';
import type { RedisCluster } from '../helpers/redis-cluster.js';
import type { TestS3 } from '../helpers/s3.js';
import { startFaultProxy, type FaultProxy } from './fault-proxy.js';
import { makeSecrets, ProcessGroup, startChaosS3, withPassword, type Secrets } from './fleet.js';

export interface Scenario {
  name: string;
  iso: Isolation;
  secrets: Secrets;
  s3: TestS3;
  /** In front of radosgw; workers' R2_ENDPOINT. */
  storeProxy: FaultProxy;
  producer: Producer;
  db: Db;
  group: ProcessGroup;
  srcRoot: string;
  close(): Promise<void>;
}

export async function setupScenario(
  name: string,
  options: {
    redisUrl?: string;
    env?: Record<string, string> | ((secrets: Secrets) => Record<string, string>);
    producerRedisUrl?: string;
    /** Run the scenario on this Redis Cluster (REDIS_CLUSTER_NODES for every process). */
    cluster?: RedisCluster;
  } = {},
): Promise<Scenario> {
  const iso = isolate(`chaos${name}`, options.cluster ? { name: 'cluster', cluster: options.cluster } : { name: 'single' });
  const clusterNodes = options.cluster ? { redisClusterNodes: options.cluster.nodes } : {};
  const secrets = makeSecrets();
  const redisUrl = options.redisUrl ?? REDIS_URL;
  await migrate(iso.config());
  const db = createDb(iso.config(), { max: 3 });
  const producer = createProducer({ redisUrl: options.producerRedisUrl ?? redisUrl, prefix: iso.prefix, ...clusterNodes });
  const s3 = await startChaosS3(iso.bucket, secrets);
  const storeProxy = await startFaultProxy({ port: Number(new URL(s3.endpoint).port) });
  const srcRoot = await mkdtemp(join(tmpdir(), `stowage-chaos-${name}-`));
  const group = new ProcessGroup({
    REDIS_URL: redisUrl,
    ...(options.cluster ? { REDIS_CLUSTER_NODES: options.cluster.nodes.join(',') } : {}),
    DATABASE_URL: withPassword(DATABASE_URL, secrets.dbPassword),
    STOWAGE_PREFIX: iso.prefix,
    STOWAGE_DB_SCHEMA: iso.schema,
    LOG_LEVEL: 'info',
    R2_ENDPOINT: storeProxy.url,
    R2_BUCKET: iso.bucket,
    R2_ACCESS_KEY_ID: secrets.accessKeyId,
    R2_SECRET_ACCESS_KEY: secrets.secretAccessKey,
    STOWAGE_AUTH_SECRET: secrets.authSecret,
    STOWAGE_PART_SIZE_MB: '5',
    STOWAGE_LOCK_DURATION_MS: '2000',
    STOWAGE_STALLED_INTERVAL_MS: '1000',
    STOWAGE_SWEEP_INTERVAL_MS: '2000',
    // Fail fast on a dead socket so retries, not timeouts, carry the run.
    STOWAGE_S3_TIMEOUT_MS: '5000',
    ...(typeof options.env === 'function' ? options.env(secrets) : options.env),
  });
  let closed = false;
  return {
    name,
    iso,
    secrets,
    s3,
    storeProxy,
    producer,
    db,
    group,
    srcRoot,
    async close() {
      if (closed) return;
      closed = true;
      const step = async (what: string, fn: () => Promise<unknown>) => {
        const t = Date.now();
        await Promise.race([fn().catch(() => {}), new Promise((r) => setTimeout(r, 15_000).unref())]);
        if (Date.now() - t > 2000) process.stdout.write(`[chaos] ${name}: closing ${what} took ${Date.now() - t} ms\n`);
      };
      await step('processes', () => group.stopAll());
      await group.save(name);
      await step('producer', () => producer.close());
      await step('db', () => db.close());
      await step('proxy', () => storeProxy.close());
      await step('s3', () => s3.close());
      await rm(srcRoot, { recursive: true, force: true });
      await iso.cleanup();
    },
  };
}
