/**
 * Queue overhead: no-op jobs through the Stowage runtime (payload validation, context, progress
 * plumbing, receipt in Postgres, metrics, dead-letter hooks) against a raw BullMQ Worker on the
 * same Redis, in the same run, same jobs, same concurrency. Two rows:
 * - jobs/s, wall clock (goal ≥ 0.85× raw);
 * - CPU per 1,000 jobs: user + system CPU of this process (the worker side: both workers run here,
 *   Redis is its own process) from the resume to the last completion, per 1,000 jobs (goal ≤ 1.10×
 *   raw's). Wall time on a 2-core machine shared with Redis hides cost that CPU time shows.
 * The Stowage side runs compiled (bench/compiled.ts), as an installed worker does: under tsx each
 * closure it makes per job also pays esbuild's __name() helper, which raw BullMQ does not.
 * Filling the queues uses src/ on both sides alike.
 */
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import type { Config } from '../src/config.js';
import type { Db } from '../src/db/pool.js';
import { jobIdFor, openQueue, parsePayload, type ExportResult, type KindQueue, type PayloadInput } from '../src/queues/index.js';
import type { Processor } from '../src/workers/context.js';
import { compiledSrc, stowageModules } from './compiled.js';
import { cleanupPrefix, median, type BenchRow } from './lib.js';

const CONCURRENCY = 16;

/**
 * What both sides' no-op returns: a records export's result for an object never stored. One object
 * for both, so each side stores the same return value.
 */
export const NOOP_RESULT: ExportResult = {
  op: 'records',
  id: 'noop',
  key: 'bench/noop/1970/01/01/noop.json',
  format: 'json',
  record_count: 1,
  size: 0,
  sha256: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
  created_at: '1970-01-01T00:00:00.000Z',
};
export const noopExport = (async () => NOOP_RESULT) satisfies Processor<'export'>;

function payloads(n: number, tag: string): PayloadInput<'export'>[] {
  return Array.from({ length: n }, (_, i) => ({ module: 'bench', userId: tag, format: 'json' as const, records: [{ i }] }));
}

/** Fill a paused queue: the worker starts on a full queue when the caller resumes it. */
async function fill(queue: KindQueue<'export'>, n: number, tag: string): Promise<void> {
  await queue.pause();
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

/**
 * Jobs/s of a worker draining `n` jobs: from its first completion to its last, counted the same
 * way for both sides (the Worker's own 'completed' event). Start-up (connections, Lua script
 * loading, the runtime's dead-letter wiring) is a one-time cost, not throughput, and at ~10,000
 * jobs/s it would otherwise be a large and noisy part of a sub-second run.
 */
interface Drain {
  /** Jobs/s from the first completion to the last. */
  rate: number;
  /** User + system CPU milliseconds of this process per 1,000 jobs, from the call to the last completion. */
  cpuMsPer1000: number;
}

async function drainRate(worker: Worker, n: number): Promise<Drain> {
  let done = 0;
  let first = 0;
  let last = 0;
  const cpu = process.cpuUsage();
  let used = { user: 0, system: 0 };
  await new Promise<void>((resolve) => {
    worker.on('completed', () => {
      last = performance.now();
      if (++done === 1) first = last;
      if (done === n) {
        used = process.cpuUsage(cpu);
        resolve();
      }
    });
  });
  return { rate: (n - 1) / ((last - first) / 1000), cpuMsPer1000: ((used.user + used.system) / 1000 / n) * 1000 };
}

async function rawRun(redisUrl: string, prefix: string, n: number): Promise<Drain> {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const queue = openQueue('export', { connection: redis, prefix }, { jobDefaults: false });
  await fill(queue, n, 'raw');
  const worker = new Worker('export', noopExport, { connection: redis.duplicate(), prefix, concurrency: CONCURRENCY });
  const rate = drainRate(worker, n);
  await queue.resume();
  await rate;
  await worker.close();
  await queue.close();
  redis.disconnect();
  return await rate;
}

/** Config, migrated schema and pool: made once for every round, outside the timed part. */
interface StowageSetup {
  config: Config;
  db: Db;
  stowage: Awaited<ReturnType<typeof stowageModules>>;
}

async function stowageRun(setup: StowageSetup, redisUrl: string, prefix: string, n: number): Promise<Drain> {
  const config = { ...setup.config, prefix };
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const queue = openQueue('export', { connection: redis, prefix }, { jobDefaults: false });
  await fill(queue, n, 'stowage');
  const { createMetrics, createLogger, startRuntime } = setup.stowage;
  const metrics = createMetrics({ defaults: false });
  const runtime = await startRuntime({
    config,
    db: setup.db,
    metrics,
    logger: createLogger({ level: 'silent' }),
    kinds: ['export'],
    processors: { export: noopExport },
    concurrency: { export: CONCURRENCY },
    maintenance: false,
  });
  const rate = drainRate(runtime.workers[0]!, n);
  await queue.resume();
  await rate;
  await runtime.close();
  await queue.close();
  redis.disconnect();
  return await rate;
}

export async function runQueueOverheadBench({ quick = false } = {}): Promise<BenchRow[]> {
  const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
  const n = Number(process.env.BENCH_N ?? (quick ? 4000 : 10_000));
  const tag = Date.now().toString(36);
  // Schema, migrations and pool once, outside the rounds: migrating and dropping a schema per
  // round left Postgres (catalog churn, autovacuum) and the machine busy during the next timed
  // run, which swung single-round ratios from 0.59 to 0.97.
  const schema = `bench_${tag}`;
  const stowage = await stowageModules(await compiledSrc());
  const { loadConfig, migrate, createDb } = stowage;
  const config = loadConfig(
    { REDIS_URL: redisUrl, STOWAGE_PREFIX: `bench-stw-${tag}`, STOWAGE_DB_SCHEMA: schema, DATABASE_URL: process.env.DATABASE_URL },
    {},
  );
  await migrate(config);
  const setup: StowageSetup = { config, db: createDb(config), stowage };
  // One untimed warm-up of each side (JIT, connections), then rounds alternating which side goes
  // first, and the median of the per-round ratios.
  await rawRun(redisUrl, `bench-raw-${tag}-warm`, Math.min(n, 1000));
  await stowageRun(setup, redisUrl, `bench-stw-${tag}-warm`, Math.min(n, 1000));
  await cleanupPrefix(redisUrl, `bench-raw-${tag}-warm`);
  await cleanupPrefix(redisUrl, `bench-stw-${tag}-warm`);
  const rounds = quick ? 3 : 9;
  const raw: number[] = [];
  const ours: number[] = [];
  const ratios: number[] = [];
  const rawCpu: number[] = [];
  const oursCpu: number[] = [];
  const cpuRatios: number[] = [];
  for (let round = 0; round < rounds; round++) {
    const runRaw = () => rawRun(redisUrl, `bench-raw-${tag}-${round}`, n);
    const runOurs = () => stowageRun(setup, redisUrl, `bench-stw-${tag}-${round}`, n);
    let r: Drain;
    let o: Drain;
    if (round % 2 === 0) {
      r = await runRaw();
      o = await runOurs();
    } else {
      o = await runOurs();
      r = await runRaw();
    }
    raw.push(r.rate);
    ours.push(o.rate);
    ratios.push(o.rate / r.rate);
    rawCpu.push(r.cpuMsPer1000);
    oursCpu.push(o.cpuMsPer1000);
    cpuRatios.push(o.cpuMsPer1000 / r.cpuMsPer1000);
    await cleanupPrefix(redisUrl, `bench-raw-${tag}-${round}`);
    await cleanupPrefix(redisUrl, `bench-stw-${tag}-${round}`);
  }
  await setup.db.pool.query(`DROP SCHEMA ${schema} CASCADE`);
  await setup.db.close();
  const ratio = median(ratios);
  const cpuRatio = median(cpuRatios);
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
    {
      what: `queue CPU: user+system CPU of the worker process per 1,000 no-op jobs, concurrency ${CONCURRENCY} (ms)`,
      baseline: `${median(rawCpu).toFixed(0)} ms (raw BullMQ Worker, median of ${rounds})`,
      stowage: `${median(oursCpu).toFixed(0)} ms (median)`,
      ratio: `${cpuRatio.toFixed(2)}× raw's CPU (median of per-round ratios ${cpuRatios.map((x) => x.toFixed(2)).join(', ')})`,
      goal: '≤ 1.10×',
      pass: cpuRatio <= 1.1,
      peakRss: null,
      raw: { baselineCpuMsPer1000: rawCpu, stowageCpuMsPer1000: oursCpu, cpuRatios, cpuRatio },
    },
  ];
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const rows = await runQueueOverheadBench({ quick: process.argv.includes('--quick') });
  console.table(rows.map(({ raw: _raw, ...r }) => r));
  process.exit(0);
}
