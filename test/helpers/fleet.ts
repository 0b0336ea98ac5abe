/** Builds the real dependencies a runtime needs (Postgres schema migrated, metrics, logger). */
import type { Config } from '../../src/config.js';
import { migrate } from '../../src/db/migrate.js';
import { createDb, type Db } from '../../src/db/pool.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { startRuntime, type ProcessorMap, type Runtime } from '../../src/workers/runtime.js';
import { Job, type Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { jobIdFor, parsePayload, type EventStream, type JobKind, type JobProgress, type PayloadInput } from '../../src/queues/index.js';
import { createStorage, type Storage } from '../../src/storage/client.js';
import type { Processor, ProcessorContext } from '../../src/workers/context.js';

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
