/**
 * /metrics numbers against the jobs a test ran: an in-process runtime sharing the server's
 * `metrics` object completes N export jobs and parks M that fail permanently, real Redis and
 * Postgres. Its own file (own prefix), so no other test's jobs are counted.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Db } from '../../src/db/pool.js';
import { PermanentError } from '../../src/errors.js';
import { buildServer, type StowageServer } from '../../src/http/server.js';
import { createLogger } from '../../src/observability/logger.js';
import { startRuntime, type Runtime } from '../../src/workers/runtime.js';
import { migratedDb } from '../helpers/fleet.js';
import { isolate } from '../helpers/isolation.js';
import { harness, type Harness } from './harness.js';
import { recordsJob, standInResult } from '../helpers/export-data.js';
import { redisVariants } from '../helpers/redis-cluster.js';

// The same behaviour on one Redis and on a 3-master Redis Cluster (a hash tag per queue).
describe.each(await redisVariants())('on $name Redis', (variant) => {
  const iso = isolate('httpmetrics', variant);
  const N = 4;
  const M = 3;
  let h: Harness;
  let app: StowageServer;
  let db: Db;
  let runtime: Runtime | undefined;

  /** The value of one sample, or undefined when the series is absent. */
  function sample(text: string, series: string): number | undefined {
    const line = text.split('\n').find((l) => l.startsWith(`${series} `));
    return line === undefined ? undefined : Number(line.slice(series.length + 1));
  }

  async function scrape(): Promise<string> {
    const res = await app.inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(200);
    return res.body;
  }

  beforeAll(async () => {
    h = await harness(iso);
    app = buildServer(h.deps);
    await app.ready();
    db = await migratedDb(h.deps.config);
  });

  afterAll(async () => {
    await runtime?.close(2000);
    await app?.close();
    await db?.close();
    await h?.close();
    await iso.cleanup();
  });

  describe('/metrics after real jobs', () => {
    it(`counts ${N} completed and ${M} parked export jobs; queue gauges agree`, async () => {
      const started = Date.now();
      runtime = await startRuntime({
        config: h.deps.config,
        db,
        kinds: ['export'],
        maintenance: false,
        logger: createLogger({ level: 'silent' }),
        // The server's own object: what the runtime counts is what /metrics shows.
        metrics: h.deps.metrics,
        processors: {
          export: async (job) => {
            const first = recordsJob(job.data).records[0] as { n: number; fail?: boolean };
            if (first.fail) throw new PermanentError(`record ${first.n} is refused`);
            return standInResult(String(first.n));
          },
        },
      });
      for (let n = 0; n < N + M; n++) {
        await h.deps.producer.enqueue('export', { module: 'm', userId: 'u', format: 'json', records: [{ n, fail: n >= N }] });
      }

      // Parking follows the failed event asynchronously: wait until both sides have settled.
      let text = '';
      const deadline = Date.now() + 15_000;
      for (;;) {
        text = await scrape();
        const done = sample(text, 'stowage_jobs_completed_total{queue="export"}') === N;
        const parked = sample(text, 'stowage_queue_jobs{queue="dead-letter",state="waiting"}') === M;
        if ((done && parked) || Date.now() > deadline) break;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }

      expect(sample(text, 'stowage_jobs_completed_total{queue="export"}')).toBe(N);
      // Permanent: one attempt each, no retry.
      expect(sample(text, 'stowage_jobs_failed_total{queue="export"}')).toBe(M);
      expect(sample(text, 'stowage_jobs_retried_total{queue="export"}') ?? 0).toBe(0);
      expect(sample(text, 'stowage_jobs_parked_total{queue="export",reason="permanent"}')).toBe(M);
      expect(sample(text, 'stowage_job_duration_seconds_count{queue="export",status="completed"}')).toBe(N);
      expect(sample(text, 'stowage_job_duration_seconds_count{queue="export",status="failed"}')).toBe(M);
      // Dead-letter depth is the parked jobs; parking removed them from export's failed set.
      expect(sample(text, 'stowage_queue_jobs{queue="dead-letter",state="waiting"}')).toBe(M);
      expect(sample(text, 'stowage_queue_jobs{queue="export",state="failed"}')).toBe(0);
      expect(sample(text, 'stowage_queue_jobs{queue="export",state="waiting"}')).toBe(0);

      // Scrape-time gauges: one live worker for export, none for backup; export's last completion now.
      expect(sample(text, 'stowage_queue_workers{queue="export"}')).toBe(1);
      expect(sample(text, 'stowage_queue_workers{queue="backup"}')).toBe(0);
      const last = sample(text, 'stowage_queue_last_completed_timestamp_seconds{queue="export"}')!;
      expect(last * 1000).toBeGreaterThanOrEqual(Math.floor(started / 1000) * 1000);
      expect(last * 1000).toBeLessThanOrEqual(Date.now());
      // Never completed anything: absent, not 0 (0 would read as "last success in 1970").
      expect(text).not.toContain('stowage_queue_last_completed_timestamp_seconds{queue="backup"}');

      await runtime.close(2000);
      runtime = undefined;
      const after = await scrape();
      expect(sample(after, 'stowage_queue_workers{queue="export"}')).toBe(0);
      expect(sample(after, 'stowage_queue_last_completed_timestamp_seconds{queue="export"}')).toBe(last);
    });
  });
});
