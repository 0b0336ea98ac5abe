/**
 * CPU per no-op job with each side alone in its process (docs/performance.md, "Queue overhead"):
 * 5 rounds of 20,000 jobs through a raw BullMQ Worker or the Stowage runtime at concurrency 16,
 * user + system CPU of this process per 1,000 jobs, and the median of rounds 2–5. Run the sides
 * in turn; the figures move by ±10 ms between runs, so compare several of each.
 *
 *   npx tsx bench/cpu-sides.ts raw|stowage [--compiled]
 */
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import type { Db } from '../src/db/pool.js';
import { jobIdFor, openQueue, parsePayload } from '../src/queues/index.js';
import type { Runtime } from '../src/workers/runtime.js';
import { compiledSrc, stowageModules } from './compiled.js';
import { noopExport as noop } from './queue-overhead.js';
import { cleanupPrefix, median } from './lib.js';

const side = process.argv[2];
if (side !== 'raw' && side !== 'stowage') throw new Error('usage: cpu-sides raw|stowage [--compiled]');
// --compiled: Stowage compiled (bench/compiled.ts), as an installed package runs it; tsx's
// transform adds a __name() call to every closure the runtime makes per job.
const from = process.argv.includes('--compiled') ? await compiledSrc() : '../src';
const { loadConfig, migrate, createDb, createLogger, createMetrics, startRuntime } = await stowageModules(from);
const N = 20_000;
const ROUNDS = 5;
const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const tag = `${side}${Date.now().toString(36)}`;
const schema = `cpu_${tag}`;
const config = loadConfig(
  { REDIS_URL: redisUrl, STOWAGE_PREFIX: `cpu-${tag}`, STOWAGE_DB_SCHEMA: schema, DATABASE_URL: process.env.DATABASE_URL },
  {},
);
let db: Db | undefined;
if (side === 'stowage') {
  await migrate(config);
  db = createDb(config);
}
const perRound: number[] = [];
for (let round = 0; round < ROUNDS; round++) {
  const prefix = `cpu-${tag}-${round}`;
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const queue = openQueue('export', { connection: redis, prefix }, { jobDefaults: false });
  await queue.pause();
  for (let i = 0; i < N; i += 1000) {
    await queue.addBulk(
      Array.from({ length: 1000 }, (_, j) => {
        const data = { module: 'bench', userId: 'u', format: 'json' as const, records: [{ i: i + j }] };
        return {
          name: 'export',
          data,
          opts: { jobId: jobIdFor('export', parsePayload('export', data)), removeOnComplete: true, attempts: 3 },
        };
      }),
    );
  }
  let runtime: Runtime | undefined;
  let worker: Worker;
  if (side === 'raw') worker = new Worker('export', noop, { connection: redis.duplicate(), prefix, concurrency: 16 });
  else {
    runtime = await startRuntime({
      config: { ...config, prefix },
      db: db!,
      metrics: createMetrics({ defaults: false }),
      logger: createLogger({ level: 'silent' }),
      kinds: ['export'],
      processors: { export: noop },
      concurrency: { export: 16 },
      maintenance: false,
    });
    worker = runtime.workers[0]!;
  }
  const cpu = process.cpuUsage();
  let used = { user: 0, system: 0 };
  let done = 0;
  await new Promise<void>((resolve) => {
    worker.on('completed', () => {
      if (++done === N) {
        used = process.cpuUsage(cpu);
        resolve();
      }
    });
    void queue.resume();
  });
  perRound.push((used.user + used.system) / 1000 / (N / 1000));
  if (runtime) await runtime.close();
  else await worker.close();
  await queue.close();
  redis.disconnect();
  await cleanupPrefix(redisUrl, prefix);
}
if (db) {
  await db.pool.query(`DROP SCHEMA ${schema} CASCADE`);
  await db.close();
}
console.log(
  `${side}: ${perRound.map((x) => x.toFixed(0)).join(' ')} ms per 1,000 jobs; median of rounds 2–${ROUNDS}: ${median(perRound.slice(1)).toFixed(1)} ms`,
);
process.exit(0);
