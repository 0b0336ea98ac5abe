/**
 * Dead letters grouped by cause, against real Redis and a real worker runtime: jobs that failed the
 * same way (messages differing only in ids and numbers) form one group; redriving a group moves
 * only its jobs, which then run again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Db } from '../../src/db/pool.js';
import { PermanentError } from '../../src/errors.js';
import { createLogger } from '../../src/observability/logger.js';
import { createProducer, type Producer } from '../../src/producers/index.js';
import { DeadLetter, type DeadLetterGroup } from '../../src/queues/dead-letter.js';
import { createRedis } from '../../src/queues/index.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { recordsJob, standInResult } from '../helpers/export-data.js';
import { migratedDb, startTestRuntime } from '../helpers/fleet.js';
import { isolate } from '../helpers/isolation.js';
import { redisVariants } from '../helpers/redis-cluster.js';

// The same behaviour on one Redis and on a 3-master Redis Cluster (a hash tag per queue).
describe.each(await redisVariants())('on $name Redis', (variant) => {
  const iso = isolate('dlqgroups', variant);
  const config = iso.config();
  const redis = createRedis(config);
  let db: Db;
  let runtime: Runtime;
  let producer: Producer;
  let dl: DeadLetter;
  /** Throttled jobs fail once, then succeed: what a redrive after the store recovers sees. */
  const throttled = new Set<number>();

  beforeAll(async () => {
    db = await migratedDb(config);
    runtime = await startTestRuntime(config, db, ['export'], {
      export: async (job) => {
        const { cause, n } = recordsJob(job.data).records[0] as { cause: string; n: number };
        if (cause === 'slow' && !throttled.has(n)) {
          throttled.add(n);
          throw new PermanentError(`S3 503 SlowDown: part ${n} of upload ${(n * 0x1f3a5c7).toString(16)}ab9 throttled`, {
            code: 'STOWAGE_ERR_STORE',
          });
        }
        if (cause === 'builddir') throw new PermanentError(`buildDir missing: "/srv/builds/${n}" for job ${job.id}`);
        return standInResult(`ok-${n}`);
      },
    });
    producer = createProducer(config);
    dl = new DeadLetter({ connection: redis, prefix: config.prefix, logger: createLogger({ level: 'silent' }) });
  });
  afterAll(async () => {
    await runtime?.close(2000);
    await producer?.close();
    await dl?.close();
    redis.disconnect();
    await db?.close();
    await iso.cleanup();
  });

  const payload = (cause: string, n: number) => ({ module: 'groups', userId: 'u1', format: 'json' as const, records: [{ cause, n }] });

  /** Enqueue one job per `n` and wait until each has failed (and so is parked). */
  async function failAll(cause: string, ns: number[]): Promise<string[]> {
    const ids: string[] = [];
    for (const n of ns) {
      const { jobId } = await producer.enqueue('export', payload(cause, n));
      await expect(producer.waitFor('export', jobId, 20_000)).rejects.toThrow();
      ids.push(jobId);
    }
    // The failed event parks at once; a sweep parks any whose park has not landed yet.
    await runtime.sweep();
    return ids;
  }

  describe('DeadLetter.groups', () => {
    let slowIds: string[];
    let buildIds: string[];
    let groups: DeadLetterGroup[];

    it('groups parked jobs by cause, largest first, with counts, first/last parked and job ids', async () => {
      slowIds = await failAll('slow', [1, 22, 333]);
      buildIds = await failAll('builddir', [7, 8]);
      groups = await dl.groups();
      expect(groups).toHaveLength(2);
      const [slow, build] = groups as [DeadLetterGroup, DeadLetterGroup];

      expect(slow).toMatchObject({
        count: 3,
        errorName: 'PermanentError',
        errorCode: 'STOWAGE_ERR_STORE',
        // The catalog's normalizer masks every digit run, the one in "S3" too.
        message: 'S<num> <num> SlowDown: part <num> of upload <hex> throttled',
        queues: ['export'],
        reasons: ['permanent'],
      });
      expect(slow.signature).toMatch(/^[0-9a-f]{12}$/);
      expect(slow.jobIds).toEqual(slowIds.map((id) => `export--${id}`));
      // The newest job's message as it was.
      expect(slow.example).toMatch(/^S3 503 SlowDown: part 333 of upload [0-9a-f]+ throttled$/);
      expect(Date.parse(slow.firstParkedAt)).toBeLessThanOrEqual(Date.parse(slow.lastParkedAt));

      expect(build).toMatchObject({
        count: 2,
        errorCode: 'STOWAGE_ERR_PERMANENT',
        message: 'buildDir missing: "<str>" for job export.<hex>',
      });
      expect(build.jobIds).toEqual(buildIds.map((id) => `export--${id}`));
      expect(build.signature).not.toBe(slow.signature);
      // Build failures were parked after the slow ones.
      expect(build.firstParkedAt >= slow.lastParkedAt).toBe(true);

      // The same causes group the same way in another process: the signature is derived, not stored.
      const again = new DeadLetter({ connection: redis, prefix: config.prefix, logger: createLogger({ level: 'silent' }) });
      try {
        expect((await again.groups()).map((g) => g.signature)).toEqual(groups.map((g) => g.signature));
      } finally {
        await again.close();
      }
      expect(await dl.groups({ queue: 'backup' })).toEqual([]);
    });

    it('redrive and purge by group touch only that group; a dry run moves nothing', async () => {
      const [slow, build] = groups as [DeadLetterGroup, DeadLetterGroup];

      const dry = await dl.purge({ group: build.signature }, { dryRun: true });
      expect(dry.sort()).toEqual(buildIds.map((id) => `export--${id}`).sort());
      const wouldMove = await dl.redrive({ group: slow.signature }, { dryRun: true });
      expect(wouldMove.map((o) => o.action)).toEqual(['would_redrive', 'would_redrive', 'would_redrive']);
      expect((await dl.list()).length).toBe(5);

      const outcomes = await dl.redrive({ group: slow.signature });
      expect(outcomes.map((o) => o.originJobId).sort()).toEqual([...slowIds].sort());
      expect(outcomes.every((o) => o.action === 'redriven')).toBe(true);
      // Back in their queue, they run again and succeed this time.
      for (const [i, id] of slowIds.entries()) {
        expect(await producer.waitFor('export', id, 20_000)).toEqual(standInResult(`ok-${[1, 22, 333][i]}`));
      }
      const left = await dl.groups();
      expect(left.map((g) => [g.signature, g.count])).toEqual([[build.signature, 2]]);

      expect(await dl.redrive({ group: slow.signature })).toEqual([]);
      await expect(dl.redrive({ group: 'not-a-signature' })).rejects.toThrow('group: expected a signature of 12 hex digits');

      expect((await dl.purge({ group: build.signature })).length).toBe(2);
      expect(await dl.list()).toEqual([]);
    });
  });
});
