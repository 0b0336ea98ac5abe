/** Builds the real dependencies a runtime needs (Postgres schema migrated, metrics, logger). */
import type { Config } from '../../src/config.js';
import { migrate } from '../../src/db/migrate.js';
import { createDb, type Db } from '../../src/db/pool.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { startRuntime, type ProcessorMap, type Runtime } from '../../src/workers/runtime.js';
import type { JobKind } from '../../src/queues/index.js';

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
