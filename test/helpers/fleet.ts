/** Builds the real dependencies a runtime needs (Postgres schema migrated, metrics, logger). */
import type { Config } from '../../src/config.js';
import { migrate } from '../../src/db/migrate.js';
import { createDb, type Db } from '../../src/db/pool.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { startRuntime, type ProcessorMap, type Runtime } from '../../src/workers/runtime.js';
import { GetObjectCommand, HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Job, Queue } from 'bullmq';
import { Redis } from 'ioredis';
import {
  createEventStream,
  jobIdFor,
  parsePayload,
  type EventStream,
  type JobKind,
  type JobProgress,
  type PayloadInput,
} from '../../src/queues/index.js';
import { createStorage, type Storage } from '../../src/storage/client.js';
import type { Processor, ProcessorContext } from '../../src/workers/context.js';
import type { Isolation } from './isolation.js';
import { startS3, type TestS3 } from './s3.js';

export async function migratedDb(config: Config): Promise<Db> {
  await migrate(config);
  return createDb(config, { max: 4 });
}

export async function startTestRuntime(config: Config, db: Db, kinds: JobKind[], processors: ProcessorMap): Promise<Runtime> {
  return startRuntime({
    config,
    db,
    kinds,
    processors,
    logger: createLogger({ level: process.env.LOG_LEVEL ?? 'silent' }),
    metrics: createMetrics({ defaults: false }),
  });
}

/**
 * Run a processor directly on a payload (validated like the runtime does) with a hand-built
 * context: its storage clients are collected in `storages` for the caller to close, progress is
 * recorded, and the domain events it emitted are returned.
 */
export async function runProcessor<K extends JobKind>(
  kind: K,
  processor: Processor<K>,
  data: PayloadInput<K>,
  deps: { config: Config; db: Db; events: EventStream; queue: Queue; storages: Storage[]; redis?: Redis },
) {
  const redis = deps.redis ?? new Redis(deps.config.redisUrl);
  const payload = parsePayload(kind, data);
  const jobId = jobIdFor(kind, payload);
  const job = new Job(deps.queue, kind, payload, {}, jobId);
  const progress: JobProgress[] = [];
  const ctx: ProcessorContext = {
    config: deps.config,
    logger: createLogger({ level: 'silent' }),
    db: deps.db,
    redis,
    storage: () => {
      const s = createStorage(deps.config);
      deps.storages.push(s);
      return s;
    },
    metrics: createMetrics({ defaults: false }),
    emit: async (type, eventData) => {
      await deps.events.emit(type, eventData, { queue: kind, jobId });
    },
    progress: async (p) => {
      progress.push(p);
    },
    signal: new AbortController().signal,
    attempt: 1,
  };
  const lastEvent = (await deps.events.read({ count: 10_000 })).at(-1)?.id ?? '0';
  const started = Date.now();
  const result = await processor(job as Parameters<Processor<K>>[0], ctx).finally(() => {
    if (!deps.redis) redis.disconnect();
  });
  const emitted = await deps.events.read({ afterId: lastEvent, count: 10_000 });
  return { result, progress, emitted, jobId, ms: Date.now() - started };
}

/**
 * What a processor test needs, set up once per file: a radosgw bucket of the file's, a config
 * pointing at it, the file's Postgres schema migrated, Redis with the domain-event stream, the
 * kind's queue (for Job objects) and a plain S3 client to read back what the processor wrote.
 * `close()` tears it all down, storages the processor opened included.
 */
export interface ProcessorTestEnv<K extends JobKind> {
  s3: TestS3;
  config: Config;
  db: Db;
  redis: Redis;
  events: EventStream;
  queue: Queue;
  /** An independent S3 client (not Stowage's) for reading back. */
  reader: S3Client;
  /** The file's config with `overrides` applied on top (storage stays the test store). */
  configWith(overrides?: Record<string, unknown>): Config;
  /** Run the kind's processor on a payload; `config` defaults to the env's. */
  run(data: PayloadInput<K>, config?: Config): ReturnType<typeof runProcessor<K>>;
  getObject(key: string): Promise<Buffer>;
  exists(key: string): Promise<boolean>;
  close(): Promise<void>;
}

export async function processorTestEnv<K extends JobKind>(
  iso: Isolation,
  kind: K,
  processor: Processor<K>,
  overrides: Record<string, unknown> = {},
): Promise<ProcessorTestEnv<K>> {
  const s3 = await startS3(iso.bucket);
  const storageConfig = { endpoint: s3.endpoint, bucket: s3.bucket, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey };
  const configWith = (more: Record<string, unknown> = {}) => iso.config({ ...overrides, ...more, storage: storageConfig });
  const config = configWith();
  const db = await migratedDb(config);
  const redis = new Redis(config.redisUrl);
  const events = createEventStream(redis, iso.prefix);
  const queue = new Queue(kind, { connection: redis.duplicate(), prefix: iso.prefix });
  const reader = new S3Client({
    region: 'us-east-1',
    endpoint: s3.endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
  const storages: Storage[] = [];
  return {
    s3,
    config,
    db,
    redis,
    events,
    queue,
    reader,
    configWith,
    run: (data, cfg = config) => runProcessor(kind, processor, data, { config: cfg, db, events, queue, storages }),
    async getObject(key) {
      const res = await reader.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
      return Buffer.from(await res.Body!.transformToByteArray());
    },
    async exists(key) {
      try {
        await reader.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key }));
        return true;
      } catch {
        return false;
      }
    },
    async close() {
      for (const s of storages) s.close();
      reader.destroy();
      await queue.close();
      redis.disconnect();
      await db.close();
      await s3.close();
      await iso.cleanup();
    },
  };
}
