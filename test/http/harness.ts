/**
 * Real dependencies for the HTTP server in tests: Redis queues under the file's prefix, a Postgres
 * pool, a radosgw bucket, a registry, and a logger whose lines the test can read.
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { ConfigInput } from '../../src/config.js';
import { migrate } from '../../src/db/migrate.js';
import { createDb, type Db } from '../../src/db/pool.js';
import type { ServerDeps } from '../../src/http/server.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { createProducer, type Producer } from '../../src/producers/index.js';
import { QUEUE_NAMES, createRedis, queuePrefix, type JobKind } from '../../src/queues/index.js';
import { createStorage, type Storage } from '../../src/storage/client.js';
import { PROCESSORS } from '../../src/workers/processors.js';
import { startRuntime, type ProcessorMap, type Runtime } from '../../src/workers/runtime.js';
import type { Isolation } from '../helpers/isolation.js';
import { startS3, type TestS3 } from '../helpers/s3.js';

export const BASIC_USER = 'ops';
export const BASIC_PASSWORD = `pw-${randomBytes(8).toString('hex')}`;

export interface Harness {
  deps: ServerDeps;
  secret: string;
  /** Every line the server logged, raw JSON. */
  logLines: string[];
  queue(name: string): Queue;
  close(): Promise<void>;
}

export async function harness(
  iso: Isolation,
  options: { auth?: boolean; s3?: boolean; databaseUrl?: string; config?: ConfigInput | Record<string, unknown> } = {},
): Promise<Harness> {
  const secret = randomBytes(32).toString('hex');
  const s3: TestS3 | undefined = options.s3 ? await startS3(iso.bucket) : undefined;
  const config = iso.config({
    ...(options.auth === false ? {} : { authSecret: secret, basicAuth: `${BASIC_USER}:${BASIC_PASSWORD}` }),
    ...(s3
      ? { storage: { endpoint: s3.endpoint, bucket: s3.bucket, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } }
      : {}),
    ...(options.databaseUrl ? { databaseUrl: options.databaseUrl } : {}),
    ...options.config,
  });
  const logLines: string[] = [];
  const logger = createLogger({ level: 'debug' }, { write: (line: string) => void logLines.push(line) });
  const redis: Redis = createRedis(config);
  const queues = QUEUE_NAMES.map(
    (name) => new Queue(name, { connection: redis, prefix: queuePrefix(config.prefix, name, redis.isCluster) }),
  );
  const producer: Producer = createProducer(config);
  const db: Db = createDb(config, { max: 2 });
  let storage: Storage | undefined;
  const deps: ServerDeps = {
    config,
    logger,
    producer,
    queues,
    redis,
    db,
    storage: () => (storage ??= createStorage(config)),
    metrics: createMetrics(),
  };
  return {
    deps,
    secret,
    logLines,
    queue: (name) => queues.find((q) => q.name === name)!,
    async close() {
      await producer.close();
      await Promise.all(queues.map((q) => q.close()));
      await redis.quit().catch(() => redis.disconnect());
      await db.close();
      storage?.close();
      await s3?.close();
    },
  };
}

/** A loopback port nothing listens on. */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export const basicHeader = (user = BASIC_USER, password = BASIC_PASSWORD) =>
  `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

/**
 * Workers for a harness: its schema migrated, then a runtime for `kinds` on the harness's config,
 * metrics and pool (the real processors unless `processors` says otherwise). Close it before `h`.
 */
export async function harnessRuntime(
  h: Harness,
  kinds: JobKind[],
  options: { processors?: ProcessorMap; maintenance?: boolean } = {},
): Promise<Runtime> {
  await migrate(h.deps.config);
  return startRuntime({
    config: h.deps.config,
    logger: createLogger({ level: 'silent' }),
    metrics: h.deps.metrics,
    db: h.deps.db,
    kinds,
    processors: options.processors ?? PROCESSORS,
    ...(options.maintenance === undefined ? {} : { maintenance: options.maintenance }),
  });
}
