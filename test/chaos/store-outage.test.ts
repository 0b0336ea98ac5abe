/**
 * Scenario 2, store outage: mid-run the fault proxy in front of the S3 server refuses connections,
 * then resets them, then answers every request with 503 ServiceUnavailable, for OUTAGE_MS in all.
 * Jobs retry with backoff; one whose retries run out inside the window is parked and comes back by
 * the automatic dead-letter redrive (the `stowage scheduler` process keeps that schedule; its
 * interval is shortened here). After recovery every job has completed, each effect exactly once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkArtifacts, makeSources } from './artifacts.js';
import { expectNoSecrets, recordSummary, sleep, waitUntil } from './fleet.js';
import { setupScenario, type Scenario } from './scenario.js';

const N = Number(process.env.CHAOS_OUTAGE_JOBS ?? 45);
const OUTAGE_MS = Number(process.env.CHAOS_OUTAGE_MS ?? 30_000);
let sc: Scenario;

beforeAll(async () => {
  sc = await setupScenario('outage', { env: { STOWAGE_DLQ_RETRY_INTERVAL_MS: '3000', STOWAGE_DLQ_MAX_RETRIES: '5' } });
});
afterAll(async () => {
  await sc?.close();
});

describe('chaos: store outage', () => {
  it(`${N} jobs complete once after the store refuses, resets and answers 503 for ${OUTAGE_MS / 1000} s`, async () => {
    const started = Date.now();
    const { group, producer, storeProxy } = sc;
    const jobs = await makeSources(sc.srcRoot, 'outage', N, { bigEvery: 15, bigBytes: 6 * 1024 * 1024 });
    await storeProxy.set({ mode: 'delay', ms: 20 });
    await Promise.all([
      group.start('w1', ['worker', '--queues', 'build-artifact', '--concurrency', '3']),
      group.start('w2', ['worker', '--queues', 'build-artifact', '--concurrency', '3']),
      group.start('sched', ['scheduler'], { readyText: 'job schedulers synced' }),
    ]);
    for (const j of jobs)
      await producer.buildArtifact({ userId: j.userId, projectId: j.projectId, versionId: j.versionId, buildDir: j.buildDir });
    const queue = producer.queue('build-artifact');
    const dlq = producer.deadLetterQueue();

    // The outage starts once a quarter of the jobs are done, so it hits a busy fleet.
    await waitUntil(
      'a quarter of the jobs completed',
      async () => ((await queue.getJobCounts('completed')).completed ?? 0) >= N / 4,
      60_000,
    );
    const doneBefore = (await queue.getJobCounts('completed')).completed ?? 0;
    const phase = OUTAGE_MS / 3;
    await storeProxy.set({ mode: 'refuse' });
    await sleep(phase);
    await storeProxy.set({ mode: 'reset' });
    await sleep(phase);
    await storeProxy.set({ mode: 'answer-503' });
    await sleep(phase);
    const duringOutage = await queue.getJobCounts('completed', 'delayed', 'active', 'waiting');
    const parkedPeak = await dlq.count();
    await storeProxy.set({ mode: 'pass' });
    const recoveredAt = Date.now();

    let maxParked = parkedPeak;
    await waitUntil(
      `${N} jobs completed after the outage`,
      async () => {
        maxParked = Math.max(maxParked, await dlq.count());
        return ((await queue.getJobCounts('completed')).completed ?? 0) >= N;
      },
      120_000,
      500,
    );
    const recoverySeconds = (Date.now() - recoveredAt) / 1000;
    const check = await checkArtifacts(sc.s3, sc.db.pool, jobs);
    const counts = await queue.getJobCounts('completed', 'failed', 'waiting', 'active', 'delayed');
    const parked = await dlq.count();
    // Every process lived through it (none crashed on the fault).
    const survivors = group.alive().length;
    await group.stopAll();
    const logs = expectNoSecrets(group.text(), sc.secrets);

    await recordSummary('store-outage', {
      jobs: N,
      outages: 1,
      outageSeconds: OUTAGE_MS / 1000,
      phases: ['refuse', 'reset', 'answer-503'],
      completedBeforeOutage: doneBefore,
      duringOutage,
      parkedThenRedriven: maxParked,
      proxy: { ...storeProxy.stats },
      recoverySeconds: Math.round(recoverySeconds),
      processesSurvived: survivors,
      lost: check.lost.length,
      duplicated: check.duplicated,
      logBytesScanned: logs.bytesScanned,
      seconds: Math.round((Date.now() - started) / 1000),
    });

    // The outage was real: the proxy turned connections away in every phase.
    expect(storeProxy.stats.resets).toBeGreaterThan(0);
    expect(storeProxy.stats.answered503).toBeGreaterThan(0);
    expect(survivors, group.text().slice(-3000)).toBe(3);
    expect(check.lost).toEqual([]);
    expect(check).toMatchObject({ objects: N, receipts: N, catalogRows: N, duplicated: 0 });
    expect(counts).toMatchObject({ completed: N, failed: 0, waiting: 0, active: 0, delayed: 0 });
    expect(parked).toBe(0);
  });
});
