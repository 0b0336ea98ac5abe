/** Job Schedulers from config, against real Redis; and the dead-letter slow automatic retry. */
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProducer } from '../../src/producers/index.js';
import { MAINTENANCE_QUEUE, createRedis, type ParkedJob } from '../../src/queues/index.js';
import { startScheduler, syncSchedules } from '../../src/queues/scheduler.js';
import { createLogger } from '../../src/observability/logger.js';
import { isolate } from '../helpers/isolation.js';
import { migratedDb, startTestRuntime } from '../helpers/fleet.js';
import { redisVariants } from '../helpers/redis-cluster.js';

// The same behaviour on one Redis and on a 3-master Redis Cluster (a hash tag per queue).
describe.each(await redisVariants())('on $name Redis', (variant) => {
  const iso = isolate('sched', variant);
  let redis: Redis;

  beforeAll(() => {
    redis = createRedis(iso.config());
  });
  afterAll(async () => {
    redis.disconnect();
    await iso.cleanup();
  });

  const schedules = [
    { id: 'nightly-agg', kind: 'aggregation', cron: '0 2 * * *', tz: 'UTC', data: { days: 7 } },
    { id: 'daily-cleanup', kind: 'cleanup', cron: '0 3 * * *', tz: 'Europe/Berlin', data: { dryRun: true } },
  ];

  describe('scheduler', () => {
    it('three schedulers started at once leave exactly one scheduler per schedule', async () => {
      const config = iso.config({ schedules, deadLetter: { retryIntervalMs: 3_600_000 } });
      const logger = createLogger({ level: 'silent' });
      const started = await Promise.all([1, 2, 3].map(() => startScheduler(config, logger)));
      await Promise.all(started.map((s) => s.close()));

      const agg = new Queue('aggregation', { connection: redis, prefix: iso.queuePrefix('aggregation') });
      const cleanup = new Queue('cleanup', { connection: redis, prefix: iso.queuePrefix('cleanup') });
      const maint = new Queue(MAINTENANCE_QUEUE, { connection: redis, prefix: iso.queuePrefix(MAINTENANCE_QUEUE) });
      try {
        const aggSchedulers = await agg.getJobSchedulers(0, -1);
        // The configured one plus the aggregation kind's defaults, each exactly once.
        expect(aggSchedulers.map((s) => [s.id ?? s.key, s.pattern, s.tz]).sort()).toEqual(
          [
            ['failure-aggregation', '0 2 * * *', 'UTC'],
            ['failure-aggregation-retry', '*/15 * * * *', 'UTC'],
            ['nightly-agg', '0 2 * * *', 'UTC'],
          ].sort(),
        );
        expect((await cleanup.getJobSchedulers(0, -1)).map((s) => [s.id ?? s.key, s.tz]).sort()).toEqual([
          ['cleanup-daily', 'UTC'],
          ['daily-cleanup', 'Europe/Berlin'],
        ]);
        expect((await maint.getJobSchedulers(0, -1)).map((s) => s.id ?? s.key)).toEqual(['dlq-auto-redrive']);
        // One pending job per schedule, not three.
        expect(await agg.getDelayedCount()).toBe(3);
        expect(await cleanup.getDelayedCount()).toBe(2);
        const nightly = (await agg.getDelayed()).find((j) => j.repeatJobKey === 'nightly-agg' || j.id?.includes('nightly-agg'));
        expect(new Date(nightly!.timestamp + nightly!.opts.delay!).getUTCHours()).toBe(2);

        // A schedule removed from config is removed from Redis.
        await syncSchedules(iso.config({ schedules: schedules.slice(1) }), redis);
        expect((await agg.getJobSchedulers(0, -1)).map((s) => s.id ?? s.key).sort()).toEqual([
          'failure-aggregation',
          'failure-aggregation-retry',
        ]);
        expect(await agg.getDelayedCount()).toBe(2);
        // A default can be switched off from config.
        await syncSchedules(
          iso.config({ schedules: [{ id: 'failure-aggregation-retry', kind: 'aggregation', cron: '*/15 * * * *', enabled: false }] }),
          redis,
        );
        expect((await agg.getJobSchedulers(0, -1)).map((s) => s.id ?? s.key)).toEqual(['failure-aggregation']);
      } finally {
        await Promise.all([agg.close(), cleanup.close(), maint.close()]);
      }
    });

    it('refuses a schedule whose data does not match its kind, naming it', async () => {
      const bad = iso.config({ schedules: [{ id: 'bad', kind: 'aggregation', cron: '0 2 * * *', data: { days: 'seven' } }] });
      await expect(syncSchedules(bad, redis)).rejects.toThrow(/schedules\.bad\.data: .*days/);
      const unknown = iso.config({ schedules: [{ id: 'nope', kind: 'zip-it', cron: '0 2 * * *' }] });
      await expect(syncSchedules(unknown, redis)).rejects.toThrow(/schedules\.nope\.kind: "zip-it" is not a job kind/);
    });

    it('redrives parked jobs automatically on the slow schedule, at most N times', async () => {
      const config = iso.config({ deadLetter: { retryIntervalMs: 300, maxRetries: 2 }, worker: { sweepIntervalMs: 200 } });
      const db = await migratedDb(config);
      let runs = 0;
      const runtime = await startTestRuntime(config, db, ['export'], {
        export: async () => {
          runs++;
          throw new Error('store down');
        },
      });
      const producer = createProducer(config);
      const scheduler = await startScheduler(config, createLogger({ level: 'silent' }));
      try {
        const { jobId } = await producer.export({ module: 'm', userId: 'u', format: 'json', records: [{ a: 1 }] }, { attempts: 1 });
        const dlq = new Queue<ParkedJob>('dead-letter', { connection: redis, prefix: iso.queuePrefix('dead-letter') });
        const deadline = Date.now() + 20_000;
        let rec: ParkedJob | undefined;
        // 1 original run + 2 automatic redrives, then it stays parked.
        while (Date.now() < deadline) {
          rec = (await dlq.getJobs(['waiting'])).map((j) => j.data).find((r) => r.originJobId === jobId);
          if (rec?.redrives === 2 && runs === 3) break;
          await new Promise((r) => setTimeout(r, 100));
        }
        expect(runs).toBe(3);
        expect(rec?.redrives).toBe(2);
        await new Promise((r) => setTimeout(r, 1000));
        expect(runs).toBe(3);
        await dlq.close();
      } finally {
        await scheduler.close();
        await producer.close();
        await runtime.close(2000);
        await db.close();
      }
    });
  });
});
