/** The http role: wires the Fastify server's dependencies from a config. */
import type { Config } from '../config.js';
import { createDb, type Db } from '../db/pool.js';
import type { Logger } from '../observability/logger.js';
import { createMetrics, type Metrics } from '../observability/metrics.js';
import { createProducer } from '../producers/index.js';
import { createRedis, JOB_KINDS, openDeadLetterQueue, openMaintenanceQueue, openQueue } from '../queues/index.js';
import { createStorage, type Storage } from '../storage/client.js';
import { startServer } from '../http/server.js';

export interface HttpRole {
  url: string;
  port: number;
  close(): Promise<void>;
}

export async function startHttpRole(config: Config, logger: Logger, shared: { metrics?: Metrics; db?: Db } = {}): Promise<HttpRole> {
  const redis = createRedis(config, { connectionName: 'stowage:http', log: logger });
  const db = shared.db ?? createDb(config);
  const metrics = shared.metrics ?? createMetrics();
  // Its own fail-fast connection: an enqueue while Redis is away errors instead of hanging a request.
  const producer = createProducer(config);
  // QUEUE_NAMES' order, then maintenance. For reads and the board: no job defaults, as the board always had.
  const at = { connection: redis, prefix: config.prefix };
  const queues = [
    ...JOB_KINDS.map((kind) => openQueue(kind, at, { jobDefaults: false })),
    openDeadLetterQueue(at, { jobDefaults: false }),
    openMaintenanceQueue(at),
  ];
  let storage: Storage | undefined;
  const server = await startServer({
    config,
    logger,
    producer,
    queues,
    redis,
    db,
    metrics,
    storage: () => (storage ??= createStorage(config)),
  });
  logger.info({ url: server.url }, 'http listening');
  return {
    url: server.url,
    port: Number(new URL(server.url).port),
    async close() {
      await server.close();
      await producer.close();
      await Promise.all(queues.map((q) => q.close()));
      storage?.close();
      if (!shared.db) await db.close();
      await redis.quit().catch(() => redis.disconnect());
    },
  };
}
