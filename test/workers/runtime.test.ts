/**
 * The worker runtime and dead-letter queue against real Redis and PostgreSQL: enqueue → process →
 * result, validation on both sides, retries, parking with full context, redrive, dedupe.
 */
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config.js';
import { getJobReceipt } from '../../src/db/job-receipts.js';
import type { Db } from '../../src/db/pool.js';
import { JobParkedError, PermanentError } from '../../src/errors.js';
import { createProducer, type Producer } from '../../src/producers/index.js';
import { createEventStream, createRedis, parkedJobId, type ParkedJob } from '../../src/queues/index.js';
import type { Processor } from '../../src/workers/context.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { isolate } from '../helpers/isolation.js';
import { migratedDb, startTestRuntime } from '../helpers/fleet.js';
import { recordsJob, standInResult } from '../helpers/export-data.js';
import { redisVariants } from '../helpers/redis-cluster.js';

// The same behaviour on one Redis and on a 3-master Redis Cluster (a hash tag per queue).
describe.each(await redisVariants())('on $name Redis', (variant) => {
  const iso = isolate('runtime', variant);
  let config: Config;
  let db: Db;
  let producer: Producer;
  let runtime: Runtime;
  let redis: Redis;

  /** Attempts seen per record tag; the processor's behaviour is chosen by the first record. */
  const seen = new Map<string, number>();
  /** When true, records tagged `flaky-until-fixed` succeed. */
  let fixed = false;

  const exportProcessor: Processor<'export'> = async (job, ctx) => {
    const first = recordsJob(job.data).records[0] as { tag: string; mode: string; failures?: number };
    const n = (seen.get(first.tag) ?? 0) + 1;
    seen.set(first.tag, n);
    await ctx.progress({ stage: 'working', bytes: 1, totalBytes: 1 });
    switch (first.mode) {
      case 'ok':
        return standInResult(`${first.tag}@${ctx.attempt}`);
      case 'flaky':
        if (n <= (first.failures ?? 1)) throw new Error(`transient failure ${n}`);
        return standInResult(`${first.tag}@${ctx.attempt}`);
      case 'permanent':
        throw new PermanentError(`source for ${first.tag} does not exist`);
      case 'always':
        throw new Error('store unavailable');
      case 'until-fixed':
        if (!fixed) throw new Error('not yet');
        return standInResult(`${first.tag}:fixed`);
      default:
        throw new Error(`unknown mode ${first.mode}`);
    }
  };

  const payload = (tag: string, mode: string, extra: Record<string, unknown> = {}) => ({
    module: 'tests',
    userId: 'u1',
    format: 'json' as const,
    records: [{ tag, mode, ...extra }],
  });

  async function parked(): Promise<ParkedJob[]> {
    const q = new Queue<ParkedJob>('dead-letter', { connection: redis, prefix: iso.queuePrefix('dead-letter') });
    const jobs = await q.getJobs(['waiting']);
    await q.close();
    return jobs.map((j) => j.data);
  }

  async function until<T>(fn: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 15_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await fn();
      if (ok(v)) return v;
      if (Date.now() > deadline) throw new Error(`condition not met in ${timeoutMs} ms; last value ${JSON.stringify(v)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  beforeAll(async () => {
    config = iso.config({ worker: { sweepIntervalMs: 500, jobReceipts: 'all' } });
    db = await migratedDb(config);
    redis = createRedis(config);
    producer = createProducer(config);
    runtime = await startTestRuntime(config, db, ['export'], { export: exportProcessor });
  });

  afterAll(async () => {
    await runtime?.close(5_000);
    await producer?.close();
    await db?.close();
    redis?.disconnect();
    await iso.cleanup();
  });

  describe('worker runtime', () => {
    it('runs an enqueued job and records its result and receipt', async () => {
      const { jobId, created } = await producer.export(payload('happy', 'ok'));
      expect(created).toBe(true);
      const result = await producer.waitFor('export', jobId, 15_000);
      expect(result).toEqual(standInResult('happy@1'));
      const job = await producer.queue('export').getJob(jobId);
      expect(job?.progress).toEqual({ stage: 'working', bytes: 1, totalBytes: 1 });
      // Completed receipts are written behind the job, in batches.
      const receipt = await until(
        () => getJobReceipt(db, 'export', jobId),
        (r) => r !== null,
      );
      expect(receipt).toMatchObject({ status: 'completed', attempts: 1, result: standInResult('happy@1') });
    });

    it('refuses a bad payload at enqueue, naming the field, and enqueues nothing', async () => {
      const before = await producer.queue('export').getJobCountByTypes('waiting', 'active', 'completed', 'delayed', 'failed');
      await expect(producer.export({ module: 'a/b', userId: 'u1', format: 'xml', records: [] } as never)).rejects.toThrow(
        /module: must not contain \/.*format:.*records: at least one record/s,
      );
      const after = await producer.queue('export').getJobCountByTypes('waiting', 'active', 'completed', 'delayed', 'failed');
      expect(after).toBe(before);
    });

    it('refuses a bad payload again at the worker and parks it after one attempt', async () => {
      // A producer of another version could write anything: add it with BullMQ directly.
      const raw = new Queue('export', { connection: redis, prefix: iso.queuePrefix('export') });
      await raw.add('export', { module: '..', userId: 'u1', format: 'json', records: [{ tag: 'raw' }] }, { jobId: 'raw-bad', attempts: 5 });
      await raw.close();
      const rec = await until(parked, (p) => p.some((r) => r.originJobId === 'raw-bad'));
      const r = rec.find((x) => x.originJobId === 'raw-bad')!;
      expect(r.reason).toBe('permanent');
      expect(r.attemptsMade).toBe(1);
      expect(r.error.name).toBe('ValidationError');
      expect(r.error.code).toBe('STOWAGE_ERR_INVALID_PAYLOAD');
      expect(r.error.message).toMatch(/module: must not contain \.\./);
      expect(seen.has('raw')).toBe(false);
    });

    it('retries a transient error with backoff and then succeeds', async () => {
      const { jobId } = await producer.export(payload('flaky', 'flaky', { failures: 2 }), { attempts: 4, backoffMs: 100 });
      const result = await producer.waitFor('export', jobId, 20_000);
      expect(result).toEqual(standInResult('flaky@3'));
      expect(seen.get('flaky')).toBe(3);
    });

    it('parks a permanent error after one attempt with its full context', async () => {
      const p = payload('perm', 'permanent');
      const { jobId } = await producer.export(p, { attempts: 5 });
      const rec = (await until(parked, (x) => x.some((r) => r.originJobId === jobId))).find((r) => r.originJobId === jobId)!;
      expect(seen.get('perm')).toBe(1);
      expect(rec).toMatchObject({
        originQueue: 'export',
        originJobId: jobId,
        name: 'export',
        payload: p,
        attemptsMade: 1,
        reason: 'permanent',
        error: { name: 'PermanentError', code: 'STOWAGE_ERR_PERMANENT' },
      });
      // The message is the error's own (its kind is data beside it, not a tag in the text).
      expect(rec.error.message).toBe('source for perm does not exist');
      expect(rec.error.stack).toMatch(/PermanentError|exportProcessor|runtime\.test/);
      expect(rec.timestamps.created).toBeGreaterThan(0);
      expect(rec.timestamps.parked).toBeGreaterThanOrEqual(rec.timestamps.created);
      // The failed set is emptied only once the park succeeded.
      expect(await producer.queue('export').getJobState(jobId)).toBe('unknown');
      expect((await getJobReceipt(db, 'export', jobId))?.status).toBe('parked');
      // Waiting on a job that was already parked (and so is gone from its queue) still says why.
      const waited = await producer.waitFor('export', jobId, 5_000).catch((e: unknown) => e);
      expect(waited).toBeInstanceOf(JobParkedError);
      expect(waited).toMatchObject({ code: 'STOWAGE_ERR_JOB_FAILED', jobId, reason: 'permanent', attemptsMade: 1 });
      expect((waited as Error).message).toMatch(
        /parked in the dead-letter queue \(permanent\) after 1 attempt as \S+: source for perm does not exist/,
      );
      const events = await createEventStream(redis, iso.prefix).read();
      expect(events.some((e) => e.type === 'job_parked' && e.jobId === jobId)).toBe(true);
    });

    it('parks a job whose retries are spent', async () => {
      const { jobId } = await producer.export(payload('always', 'always'), { attempts: 3, backoffMs: 50 });
      const rec = (await until(parked, (x) => x.some((r) => r.originJobId === jobId))).find((r) => r.originJobId === jobId)!;
      expect(seen.get('always')).toBe(3);
      expect(rec.reason).toBe('retries_exhausted');
      expect(rec.attemptsMade).toBe(3);
      expect(rec.error).toMatchObject({ name: 'Error', message: 'store unavailable' });
      expect(rec.error.code).toBeUndefined();
      // The error record beside the failed job is gone once the job is parked (deleted just after
      // the dead-letter copy is added, so wait for it briefly).
      await until(
        () => redis.exists(`${iso.prefix}:stowage:job-error:export:${jobId}`),
        (n) => n === 0,
        3_000,
      );
    });

    it('runs a duplicate enqueue once', async () => {
      const a = await producer.export(payload('dupe', 'ok'));
      const b = await producer.export(payload('dupe', 'ok'));
      expect(b.jobId).toBe(a.jobId);
      expect(b.created).toBe(false);
      await producer.waitFor('export', a.jobId, 15_000);
      const c = await producer.export(payload('dupe', 'ok'));
      expect(c.created).toBe(false);
      await new Promise((r) => setTimeout(r, 300));
      expect(seen.get('dupe')).toBe(1);
    });

    it('redrives parked jobs by id, by queue and all; they run again and succeed', async () => {
      fixed = false;
      const ids: string[] = [];
      for (const tag of ['rd-id', 'rd-queue', 'rd-all']) {
        ids.push((await producer.export(payload(tag, 'until-fixed'), { attempts: 1 })).jobId);
      }
      await until(parked, (x) => ids.every((id) => x.some((r) => r.originJobId === id)));
      fixed = true;
      const dl = runtime.deadLetter;

      // --dry-run moves nothing.
      const dry = await dl.redrive({ ids: [ids[0]!] }, { dryRun: true });
      expect(dry).toEqual([expect.objectContaining({ originJobId: ids[0], action: 'would_redrive' })]);
      expect((await parked()).some((r) => r.originJobId === ids[0])).toBe(true);

      const byId = await dl.redrive({ ids: [parkedJobId('export', ids[0]!)] });
      expect(byId.map((o) => o.action)).toEqual(['redriven']);
      expect(await producer.waitFor('export', ids[0]!, 15_000)).toEqual(standInResult('rd-id:fixed'));

      // Other tests' parked jobs are in the same queue: by queue redrives them all from export.
      const byQueue = await dl.redrive({ queue: 'export' });
      expect(byQueue.some((o) => o.originJobId === ids[1] && o.action === 'redriven')).toBe(true);
      expect(await producer.waitFor('export', ids[1]!, 15_000)).toEqual(standInResult('rd-queue:fixed'));
      expect(await producer.waitFor('export', ids[2]!, 15_000)).toEqual(standInResult('rd-all:fixed'));

      // Whatever is parked again (the permanent ones) goes back with --all.
      await until(parked, (x) => x.some((r) => r.reason === 'permanent'));
      const all = await dl.redrive({ all: true });
      expect(all.length).toBeGreaterThan(0);
      expect(all.every((o) => o.action === 'redriven')).toBe(true);
    });

    it('purges parked jobs', async () => {
      const { jobId } = await producer.export(payload('purge-me', 'permanent'));
      await until(parked, (x) => x.some((r) => r.originJobId === jobId));
      const dry = await runtime.deadLetter.purge({ ids: [jobId] }, { dryRun: true });
      expect(dry).toEqual([parkedJobId('export', jobId)]);
      expect((await parked()).some((r) => r.originJobId === jobId)).toBe(true);
      await runtime.deadLetter.purge({ ids: [jobId] });
      expect((await parked()).some((r) => r.originJobId === jobId)).toBe(false);
    });
  });
});
