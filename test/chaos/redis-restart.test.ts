/**
 * Scenario 3, Redis restart: the fleet runs on a private `redis-server` (AOF on, fsync always, as
 * DESIGN.md asks of production Redis) that is killed with SIGKILL mid-run and restarted from its
 * append-only file. A producer keeps enqueueing throughout, as an application would: an enqueue
 * that fails while Redis is away was never accepted and is tried again. Workers and the producer
 * must reconnect by themselves; every accepted job completes, its effect there exactly once.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../helpers/ports.js';
import { checkArtifacts, makeSources, enqueueThroughOutage } from './artifacts.js';
import { expectNoSecrets, recordSummary, sleep, waitUntil } from './fleet.js';
import { setupScenario, type Scenario } from './scenario.js';

const N = Number(process.env.CHAOS_REDIS_JOBS ?? 40);
const DOWN_MS = 3_000;
let sc: Scenario;
let redisDir: string;
let redisPort: number;
let redis: ChildProcess | undefined;

async function startRedis(): Promise<ChildProcess> {
  const child = spawn(
    'redis-server',
    ['--port', String(redisPort), '--bind', '127.0.0.1', '--appendonly', 'yes', '--appendfsync', 'always', '--save', '', '--dir', redisDir],
    { stdio: 'ignore' },
  );
  const probe = new Redis(redisPort, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => 100 });
  probe.on('error', () => {});
  try {
    await waitUntil('private redis-server answers PING', async () => (await probe.ping().catch(() => '')) === 'PONG', 10_000, 100);
  } finally {
    probe.disconnect();
  }
  return child;
}

beforeAll(async () => {
  redisDir = await mkdtemp(join(tmpdir(), 'stowage-chaos-redis-'));
  redisPort = await freePort();
  redis = await startRedis();
  sc = await setupScenario('redis', { redisUrl: `redis://127.0.0.1:${redisPort}` });
});
afterAll(async () => {
  await sc?.close();
  redis?.kill('SIGKILL');
  if (redisDir) await rm(redisDir, { recursive: true, force: true });
});

describe('chaos: Redis restart', () => {
  it(`${N} jobs accepted around a SIGKILL and restart of Redis complete once`, async () => {
    const started = Date.now();
    const { group, producer } = sc;
    const jobs = await makeSources(sc.srcRoot, 'redis', N, { bigEvery: 20, bigBytes: 6 * 1024 * 1024 });
    await sc.storeProxy.set({ mode: 'delay', ms: 20 });
    await Promise.all([
      group.start('w1', ['worker', '--queues', 'build-artifact', '--concurrency', '3']),
      group.start('w2', ['worker', '--queues', 'build-artifact', '--concurrency', '3']),
    ]);

    const enqueuing = enqueueThroughOutage(producer, jobs);

    await waitUntil('a third of the jobs accepted', () => enqueuing.accepted >= N / 3, 60_000, 50);
    const acceptedBeforeKill = enqueuing.accepted;
    redis!.kill('SIGKILL');
    await new Promise((r) => redis!.once('exit', r));
    await sleep(DOWN_MS);
    redis = await startRedis();
    const restartedAt = Date.now();
    await enqueuing.done;

    const queue = producer.queue('build-artifact');
    await waitUntil(
      `${N} jobs completed after the restart`,
      async () => ((await queue.getJobCounts('completed')).completed ?? 0) >= N,
      120_000,
      500,
    );
    const recoverySeconds = Math.round((Date.now() - restartedAt) / 1000);
    const counts = await queue.getJobCounts('completed', 'failed', 'waiting', 'active', 'delayed');
    const parked = await producer.deadLetterQueue().count();
    const check = await checkArtifacts(sc.s3, sc.db.pool, jobs);
    // Both workers lived through it: they reconnected instead of exiting.
    const survivors = group.alive().length;
    await group.stopAll();
    const logs = expectNoSecrets(group.text(), sc.secrets);

    await recordSummary('redis-restart', {
      jobs: N,
      outages: 1,
      redisDownSeconds: DOWN_MS / 1000,
      acceptedBeforeKill,
      enqueueRefusedWhileDown: enqueuing.refused,
      workersSurvived: survivors,
      recoverySeconds,
      lost: check.lost.length,
      duplicated: check.duplicated,
      logBytesScanned: logs.bytesScanned,
      seconds: Math.round((Date.now() - started) / 1000),
    });

    expect(survivors).toBe(2);
    expect(check.lost).toEqual([]);
    expect(check).toMatchObject({ objects: N, receipts: N, catalogRows: N, duplicated: 0 });
    expect(counts).toMatchObject({ completed: N, failed: 0, waiting: 0, active: 0, delayed: 0 });
    expect(parked).toBe(0);
  });
});
