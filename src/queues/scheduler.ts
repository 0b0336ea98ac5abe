/**
 * The scheduler role: keeps BullMQ Job Schedulers equal to the configured schedules
 * (src/queues/schedules.ts).
 *
 * Upserting a Job Scheduler by id is idempotent in BullMQ, so any number of schedulers may run at
 * once (for availability): they converge on exactly one scheduler per schedule. Schedulers that are
 * no longer configured are removed. BullMQ's workers then create each next job; this process only
 * keeps the definitions right and re-syncs periodically to heal manual edits.
 */
import type { Redis } from 'ioredis';
import type { Config } from '../config.js';
import type { Logger } from '../observability/logger.js';
import { createRedis } from './connection.js';
import { JOB_KINDS } from './contract.js';
import { openQueueByName } from './factory.js';
import { desiredSchedules, MAINTENANCE_QUEUE, scheduleJobOptions } from './schedules.js';

export interface SyncResult {
  upserted: string[];
  removed: string[];
}

export async function syncSchedules(config: Config, connection: Redis, logger?: Logger): Promise<SyncResult> {
  const desired = desiredSchedules(config);
  const result: SyncResult = { upserted: [], removed: [] };
  for (const name of [...JOB_KINDS, MAINTENANCE_QUEUE]) {
    // By name: a schedule's data was checked by desiredSchedules, and the worker checks each job again.
    // A kind's default job options under the template's own (the same four) change nothing.
    const queue = openQueueByName(name, { connection, prefix: config.prefix });
    try {
      const want = desired.filter((d) => d.queue === name);
      for (const d of want) {
        await queue.upsertJobScheduler(d.id, d.repeat, { name: d.jobName, data: d.data, opts: scheduleJobOptions(d.queue) });
        result.upserted.push(d.id);
      }
      const wanted = new Set(want.map((d) => d.id));
      for (const existing of await queue.getJobSchedulers(0, -1)) {
        const id = existing.id ?? existing.key;
        if (!wanted.has(id)) {
          await queue.removeJobScheduler(id);
          result.removed.push(id);
        }
      }
    } finally {
      await queue.close();
    }
  }
  logger?.info(result, 'job schedulers synced');
  return result;
}

export interface Scheduler {
  close(): Promise<void>;
}

export async function startScheduler(config: Config, logger: Logger, options: { resyncMs?: number } = {}): Promise<Scheduler> {
  const connection = createRedis(config, { connectionName: 'stowage:scheduler', log: logger });
  await syncSchedules(config, connection, logger);
  const timer = setInterval(
    () => {
      syncSchedules(config, connection, logger).catch((err: unknown) => logger.warn({ err }, 'schedule resync failed'));
    },
    options.resyncMs ?? 5 * 60_000,
  );
  return {
    async close() {
      clearInterval(timer);
      await connection.quit().catch(() => connection.disconnect());
    },
  };
}
