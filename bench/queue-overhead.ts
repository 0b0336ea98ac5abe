/**
 * Queue overhead: no-op jobs through the Stowage runtime (payload validation, context, progress
 * plumbing, receipt in Postgres, metrics, dead-letter hooks) against a raw BullMQ Worker on the
 * same Redis, in the same run, same jobs, same concurrency. Goal: Stowage ≥ 0.85× raw jobs/s.
 */
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { loadConfig } from '../src/config.js';
import { migrate } from '../src/db/migrate.js';
import { createDb } from '../src/db/pool.js';
import { createLogger } from '../src/observability/logger.js';
import { createMetrics } from '../src/observability/metrics.js';
import { jobIdFor, parsePayload, type PayloadInput } from '../src/queues/index.js';
import { startRuntime } from '../src/workers/runtime.js';
import { cleanupPrefix, type BenchRow } from './lib.js';

const CONCURRENCY = 16;

function payloads(n: number, tag: string): PayloadInput<'export'>[] {
  return Array.from({ length: n }, (_, i) => ({ module: 'bench', userId: tag, format: 'json' as const, records: [{ i }] }));
}

async function fill(queue: Queue, n: number, tag: string): Promise<void> {
  const all = payloads(n, tag);
  for (let i = 0; i < all.length; i += 1000) {
    await queue.addBulk(
      all.slice(i, i + 1000).map((data) => ({
        name: 'export',
        data,
        opts: { jobId: jobIdFor('export', parsePayload('export', data)), removeOnComplete: true, attempts: 3 },
      })),
    );
  }
}

async function drain(count: () => Promise<number>, n: number): Promise<void> {
  while ((await count()) < n) await new Promise((r) => setTimeout(r, 5));
}

async function rawRun(redisUrl: string, prefix: string, n: number): Promise<number> {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const queue = new Queue('export', { connection: redis, prefix });
  await fill(queue, n, 'raw');
  let done = 0;
  const started = performance.now();
  const worker = new Worker('export', async () => ({ ok: true }), { connection: redis.duplicate(), prefix, concurrency: CONCURRENCY });
  worker.on('completed', () => done++);
  await drain(async () => done, n);
  const seconds = (performance.now() - started) / 1000;
  await worker.close();
  await queue.close();
  redis.disconnect();
  return n / seconds;
}

async function stowageRun(redisUrl: string, prefix: string, schema: string, n: number): Promise<number> {
  const config = loadConfig({ REDIS_URL: redisUrl, STOWAGE_PREFIX: prefix, STOWAGE_DB_SCHEMA: schema, DATABASE_URL: process.env.DATABASE_URL }, {});
  await migrate(config);
  const db = createDb(config);
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const queue = new Queue('export', { connection: redis, prefix });
  await fill(queue, n, 'stowage');
  const metrics = createMetrics({ defaults: false });
  const started = performance.now();
  const runtime = await startRuntime({
    config,
    db,
    metrics,
    logger: createLogger({ level: 'silent' }),
    kinds: ['export'],
    processors: { export: async () => ({ ok: true }) },
    concurrency: { export: CONCURRENCY },
    maintenance: false,
  });
  await drain(async () => (await metrics.jobsCompleted.get()).values.reduce((a, v) => a + v.value, 0), n);
  const seconds = (performance.now() - started) / 1000;
  await runtime.close();
  await queue.close();
  redis.disconnect();
  await db.pool.query(`DROP SCHEMA ${schema} CASCADE`);
  await db.close();
  return n / seconds;
}

export async function runQueueOverheadBench({ quick = false } = {}): Promise<BenchRow[]> {
  const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
  const n = Number(process.env.BENCH_N ?? (quick ? 2000 : 10_000));
  const tag = Date.now().toString(36);
  // Several rounds, alternating which side goes first, and the median of the per-round ratios:
  // on a noisy 2-core machine one round's ratio swings by ±20 %.
  const rounds = quick ? 1 : 5;
  const raw: number[] = [];
  const ours: number[] = [];
  const ratios: number[] = [];
  for (let round = 0; round < rounds; round++) {
    const runRaw = () => rawRun(redisUrl, `bench-raw-${tag}-${round}`, n);
    const runOurs = () => stowageRun(redisUrl, `bench-stw-${tag}-${round}`, `bench_${tag}_${round}`, n);
    let r: number;
    let o: number;
    if (round % 2 === 0) {
      r = await runRaw();
      o = await runOurs();
    } else {
      o = await runOurs();
      r = await runRaw();
    }
    raw.push(r);
    ours.push(o);
    ratios.push(o / r);
    await cleanupPrefix(redisUrl, `bench-raw-${tag}-${round}`);
    await cleanupPrefix(redisUrl, `bench-stw-${tag}-${round}`);
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const ratio = median(ratios);
  return [
    {
      what: `queue overhead: ${n} no-op jobs, concurrency ${CONCURRENCY} (jobs/s)`,
      baseline: `${median(raw).toFixed(0)} jobs/s (raw BullMQ Worker, median of ${rounds})`,
      stowage: `${median(ours).toFixed(0)} jobs/s (median)`,
      ratio: `${ratio.toFixed(2)}× (median of per-round ratios ${ratios.map((x) => x.toFixed(2)).join(', ')})`,
      goal: '≥ 0.85×',
      pass: ratio >= 0.85,
      peakRss: null,
      raw: { baselineJobsPerSec: raw, stowageJobsPerSec: ours, ratios, ratio },
    },
  ];
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const rows = await runQueueOverheadBench({ quick: process.argv.includes('--quick') });
  console.table(rows.map(({ raw: _raw, ...r }) => r));
  process.exit(0);
}
