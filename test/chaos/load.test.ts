/**
 * Scenario 5, load: LOAD_JOBS mixed small jobs (build-artifact of a tiny folder, and cleanup dry
 * runs over an empty prefix) on three worker processes, 1 % of them doomed: build-artifact jobs
 * whose buildDir does not exist, a PermanentError. Job receipts for every finished job
 * (STOWAGE_JOB_RECEIPTS=all) are the ledger: completed + parked = total exactly, the dead-letter
 * queue holds exactly the doomed ones, and afterwards the Redis keys under the prefix are bounded by
 * the retention of DEFAULT_JOB_OPTIONS (removeOnComplete: count 1000 per queue), not by the load.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_JOB_OPTIONS } from '../../src/queues/index.js';
import { REDIS_URL } from '../helpers/isolation.js';
import { expectNoSecrets, recordSummary, waitUntil } from './fleet.js';
import { setupScenario, type Scenario } from './scenario.js';

const TOTAL = Number(process.env.CHAOS_LOAD_JOBS ?? 10_000);
const DOOMED_EVERY = 100;
let sc: Scenario;

beforeAll(async () => {
  sc = await setupScenario('load', { env: { STOWAGE_JOB_RECEIPTS: 'all', LOG_LEVEL: 'warn' } });
});
afterAll(async () => {
  await sc?.close();
});

async function redisFootprint(prefix: string): Promise<{ keys: number; bytes: number }> {
  const redis = new Redis(REDIS_URL);
  try {
    let cursor = '0';
    let keys = 0;
    let bytes = 0;
    do {
      const [next, batch] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
      cursor = next;
      keys += batch.length;
      const pipeline = redis.pipeline();
      for (const k of batch) pipeline.memory('USAGE', k);
      for (const [, n] of (await pipeline.exec()) ?? []) bytes += Number(n ?? 0);
    } while (cursor !== '0');
    return { keys, bytes };
  } finally {
    redis.disconnect();
  }
}

describe('chaos: load', () => {
  it(`${TOTAL} mixed jobs with 1 % permanent failures: completed + parked = total, DLQ = the injected ones`, async () => {
    const started = Date.now();
    const { group, producer, db, iso } = sc;
    const buildDir = join(sc.srcRoot, 'tiny');
    await mkdir(buildDir, { recursive: true });
    await writeFile(join(buildDir, 'index.html'), '<h1>load</h1>\n');
    // At LOG_LEVEL=warn (10,000 'job completed' lines would cost more than the jobs) no ready line
    // is printed: wait on Redis until every process's workers are connected.
    const start = (name: string) =>
      group.start(name, ['worker', '--queues', 'build-artifact,cleanup', '--concurrency', '8'], { readyText: null });
    await Promise.all([start('w1'), start('w2'), start('w3')]);
    await waitUntil(
      '3 worker processes on both queues',
      async () =>
        (await producer.queue('build-artifact').getWorkersCount()) >= 3 && (await producer.queue('cleanup').getWorkersCount()) >= 3,
      60_000,
      250,
    );

    const doomed = new Set<string>();
    const kinds = { 'build-artifact': 0, cleanup: 0 };
    const enqueueStarted = Date.now();
    const BATCH = 200;
    for (let i = 0; i < TOTAL; i += BATCH) {
      await Promise.all(
        Array.from({ length: Math.min(BATCH, TOTAL - i) }, async (_, k) => {
          const n = i + k;
          if (n % DOOMED_EVERY === DOOMED_EVERY - 1) {
            const { jobId } = await producer.buildArtifact({
              userId: 'load',
              projectId: 'doomed',
              versionId: `v${n}`,
              buildDir: join(sc.srcRoot, 'missing', String(n)),
            });
            doomed.add(jobId);
            kinds['build-artifact']++;
          } else if (n % 2 === 0) {
            await producer.buildArtifact({ userId: `u${n % 10}`, projectId: 'load', versionId: `v${n}`, buildDir });
            kinds['build-artifact']++;
          } else {
            await producer.cleanup({ dryRun: true, prefix: `load-nothing/${n}/` });
            kinds.cleanup++;
          }
        }),
      );
    }
    const enqueueSeconds = (Date.now() - enqueueStarted) / 1000;

    const ledger = async () =>
      Object.fromEntries(
        (await db.pool.query('SELECT status, count(*)::int AS n FROM job_receipts GROUP BY status')).rows.map((r) => [r.status, r.n]),
      ) as {
        completed?: number;
        parked?: number;
      };
    let last = 0;
    await waitUntil(
      `${TOTAL} job receipts`,
      async () => {
        const l = await ledger();
        const done = (l.completed ?? 0) + (l.parked ?? 0);
        if (Date.now() - last > 10_000) {
          last = Date.now();
          process.stdout.write(`[chaos] load: ${done}/${TOTAL} finished after ${Math.round((Date.now() - started) / 1000)} s\n`);
        }
        return done >= TOTAL;
      },
      240_000,
      1000,
    );
    const runSeconds = (Date.now() - enqueueStarted) / 1000;
    const l = await ledger();
    const parkedJobs = await producer.deadLetterQueue().getJobs(['waiting'], 0, -1);
    const parkedIds = new Set(parkedJobs.map((j) => j.data.originJobId));
    const counts = {
      'build-artifact': await producer.queue('build-artifact').getJobCounts('waiting', 'active', 'delayed', 'failed', 'completed'),
      cleanup: await producer.queue('cleanup').getJobCounts('waiting', 'active', 'delayed', 'failed', 'completed'),
    };
    const footprint = await redisFootprint(iso.prefix);
    await group.stopAll();
    const logs = expectNoSecrets(group.text(), sc.secrets);

    // Retention bound: per queue, at most removeOnComplete.count completed jobs (each a hash, plus
    // a small shared set of queue keys), the parked jobs, and the event stream.
    const keep = (DEFAULT_JOB_OPTIONS['build-artifact'].removeOnComplete as { count: number }).count;
    const keyBound = 2 * keep + 2 * doomed.size + 100;
    await recordSummary('load', {
      jobs: TOTAL,
      kinds,
      workers: 3,
      permanentInjected: doomed.size,
      completed: l.completed ?? 0,
      parked: l.parked ?? 0,
      lost: TOTAL - (l.completed ?? 0) - (l.parked ?? 0),
      enqueueSeconds: Math.round(enqueueSeconds),
      runSeconds: Math.round(runSeconds),
      jobsPerSecond: Math.round(TOTAL / runSeconds),
      redisKeysAfter: footprint.keys,
      redisKeyBound: keyBound,
      redisBytesAfter: footprint.bytes,
      logBytesScanned: logs.bytesScanned,
    });

    expect((l.completed ?? 0) + (l.parked ?? 0)).toBe(TOTAL);
    expect(l.parked).toBe(doomed.size);
    expect(parkedIds).toEqual(doomed);
    expect(parkedJobs.every((j) => j.data.reason === 'permanent')).toBe(true);
    for (const c of Object.values(counts)) expect(c).toMatchObject({ waiting: 0, active: 0, delayed: 0, failed: 0 });
    expect(counts['build-artifact'].completed).toBeLessThanOrEqual(keep);
    expect(footprint.keys).toBeLessThanOrEqual(keyBound);
    // Completed jobs are small hashes; the events stream is capped (MAXLEN ~10000): a few MB at most.
    expect(footprint.bytes).toBeLessThan(16 * 1024 * 1024);
  });
});
