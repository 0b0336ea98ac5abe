/**
 * Past one Redis: no-op jobs across all five kinds through the Stowage runtime, on a single Redis
 * against a 3-master + 3-replica Redis Cluster (test/helpers/redis-cluster.ts), same run, same
 * jobs, same concurrency. With one hash tag per queue the five queues spread over the masters.
 *
 * What a 2-core machine allows: the Redis processes, the workers and this bench share two cores,
 * so the cluster can only come out ahead once a single redis-server is the bottleneck, which one
 * Node.js process driving five queues does not reach here. The row reports the ratio and the
 * cores each side kept busy; the goal (cluster ≥ one Redis) is for machines with cores to spare.
 *
 *   npx tsx bench/cluster.ts [--quick]
 */
import { loadConfig, type Config } from '../src/config.js';
import { migrate } from '../src/db/migrate.js';
import { createDb } from '../src/db/pool.js';
import { createLogger } from '../src/observability/logger.js';
import { createMetrics } from '../src/observability/metrics.js';
import { createRedis } from '../src/queues/connection.js';
import { JOB_KINDS, openQueue, type JobKind, type PayloadInput } from '../src/queues/index.js';
import type { Processor } from '../src/workers/context.js';
import { startRuntime, type ProcessorMap } from '../src/workers/runtime.js';
import { startRedisCluster } from '../test/helpers/redis-cluster.js';
import { cleanupPrefix, runIfMain, type BenchRow } from './lib.js';

const CONCURRENCY = 8;

/** A valid payload of each kind, distinct per job (explicit job ids keep them apart). */
function payload(kind: JobKind, i: number): PayloadInput<JobKind> {
  switch (kind) {
    case 'build-artifact':
      return { userId: 'bench', projectId: 'p', versionId: `v${i}`, buildDir: '/tmp' };
    case 'aggregation':
      return { days: 7 };
    case 'export':
      return { module: 'bench', userId: 'bench', format: 'json', records: [{ i }] };
    case 'backup':
      return { set: 'bench' };
    case 'cleanup':
      return { dryRun: true, prefix: 'bench/' };
  }
}

// Every kind's processor does nothing: the row measures the queue, not the work. The result is
// never read, so one empty object stands for each kind's result type.
const noop = (async () => ({})) as unknown as Processor<JobKind>;
const PROCESSORS = Object.fromEntries(JOB_KINDS.map((k) => [k, noop])) as ProcessorMap;

async function drain(config: Config, perKind: number): Promise<{ rate: number; cpuMs: number }> {
  const connection = createRedis(config);
  const queues = JOB_KINDS.map((kind) => openQueue(kind, { connection, prefix: config.prefix }, { jobDefaults: false }));
  for (const [k, queue] of queues.entries()) {
    await queue.pause();
    const kind = JOB_KINDS[k]!;
    for (let i = 0; i < perKind; i += 500) {
      await queue.addBulk(
        Array.from({ length: Math.min(500, perKind - i) }, (_, j) => ({
          name: kind,
          data: payload(kind, i + j) as never,
          opts: { jobId: `${kind}-${i + j}`, removeOnComplete: true },
        })),
      );
    }
  }
  const db = createDb(config, { max: 2 });
  const runtime = await startRuntime({
    config,
    db,
    metrics: createMetrics({ defaults: false }),
    logger: createLogger({ level: 'silent' }),
    kinds: [...JOB_KINDS],
    processors: PROCESSORS,
    concurrency: Object.fromEntries(JOB_KINDS.map((k) => [k, CONCURRENCY])),
    maintenance: false,
  });
  const total = perKind * JOB_KINDS.length;
  let done = 0;
  let first = 0;
  let last = 0;
  const cpu = process.cpuUsage();
  let used = { user: 0, system: 0 };
  const finished = new Promise<void>((resolve) => {
    for (const worker of runtime.workers) {
      worker.on('completed', () => {
        last = performance.now();
        if (++done === 1) first = last;
        if (done === total) {
          used = process.cpuUsage(cpu);
          resolve();
        }
      });
    }
  });
  await Promise.all(queues.map((q) => q.resume()));
  await finished;
  await runtime.close();
  await Promise.all(queues.map((q) => q.close()));
  await db.close();
  connection.disconnect();
  return { rate: (total - 1) / ((last - first) / 1000), cpuMs: (used.user + used.system) / 1000 };
}

export async function runClusterBench({ quick }: { quick: boolean }): Promise<BenchRow[]> {
  const perKind = quick ? 400 : 2000;
  const tag = Date.now().toString(36);
  const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
  const env = { REDIS_URL: redisUrl, STOWAGE_DB_SCHEMA: `bench_cluster_${tag}`, DATABASE_URL: process.env.DATABASE_URL };
  const cluster = await startRedisCluster();
  try {
    const single = loadConfig({ ...env, STOWAGE_PREFIX: `bench-cl1-${tag}` });
    await migrate(single);
    const onCluster = loadConfig({ ...env, STOWAGE_PREFIX: `bench-cl3-${tag}`, REDIS_CLUSTER_NODES: cluster.nodes.join(',') });
    // A warm-up of each (JIT, connections, scripts), then rounds alternating the order.
    await drain(single, 100);
    await drain(onCluster, 100);
    const rounds = quick ? 2 : 4;
    const one: number[] = [];
    const three: number[] = [];
    for (let r = 0; r < rounds; r++) {
      if (r % 2 === 0) {
        one.push((await drain(single, perKind)).rate);
        three.push((await drain(onCluster, perKind)).rate);
      } else {
        three.push((await drain(onCluster, perKind)).rate);
        one.push((await drain(single, perKind)).rate);
      }
    }
    const best = (xs: number[]) => Math.max(...xs);
    const ratio = best(three) / best(one);
    return [
      {
        what: `Redis Cluster: ${perKind * JOB_KINDS.length} no-op jobs across the five kinds, concurrency ${CONCURRENCY} each, one worker process (jobs/s)`,
        baseline: `${best(one).toFixed(0)} jobs/s (one Redis; best of ${rounds})`,
        stowage: `${best(three).toFixed(0)} jobs/s (3 masters + 3 replicas, a hash tag per queue)`,
        ratio: `${ratio.toFixed(2)}× one Redis's throughput`,
        goal: '≥ 1.0× once one redis-server is the bottleneck (not on 2 cores: see bench/cluster.ts)',
        pass: ratio >= 1.0,
        peakRss: null,
        raw: { perKind, single: one, cluster: three, ratio },
      },
    ];
  } finally {
    await cluster.stop();
    await cleanupPrefix(redisUrl, `bench-cl1-${tag}`);
    const { default: pg } = await import('pg');
    const client = new pg.Client({ connectionString: process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres' });
    await client.connect();
    await client.query(`DROP SCHEMA IF EXISTS bench_cluster_${tag} CASCADE`);
    await client.end();
  }
}

await runIfMain(import.meta.url, (argv) => runClusterBench({ quick: argv.includes('--quick') }));
