/**
 * Redis Cluster failover: the fleet runs on a 3-master + 3-replica cluster (REDIS_CLUSTER_NODES);
 * mid-run the master serving the build-artifact queue's slot is killed with SIGKILL and its
 * replica is promoted (cluster-node-timeout 2 s). A producer keeps enqueueing throughout, retrying
 * what is refused meanwhile. Workers and the producer must follow the promotion by themselves;
 * every accepted job completes or is parked exactly once, its object there once. Then the old
 * master is started again and must rejoin as a replica of the promoted one.
 */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queuePrefix } from '../../src/queues/index.js';
import { type RedisCluster, startRedisCluster } from '../helpers/redis-cluster.js';
import { checkArtifacts, makeSources, enqueueThroughOutage } from './artifacts.js';
import { expectNoSecrets, recordSummary, sleep, waitUntil } from './fleet.js';
import { setupScenario, type Scenario } from './scenario.js';

const N = Number(process.env.CHAOS_CLUSTER_JOBS ?? 40);
let cluster: RedisCluster;
let sc: Scenario;

beforeAll(async () => {
  cluster = await startRedisCluster();
  sc = await setupScenario('cluster', { cluster });
});
afterAll(async () => {
  try {
    // Bounded: a fleet left waiting on a dead node must not keep the cluster's processes alive
    // past the file (CI once timed out here and left six redis-servers running).
    await Promise.race([sc?.close(), sleep(45_000)]);
  } finally {
    await cluster?.stop();
  }
}, 90_000);

/** `role` of the node on `port`: master or slave (Redis's word). */
async function role(port: number): Promise<string> {
  const r = new Redis({ host: '127.0.0.1', port, lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
  r.on('error', () => {});
  try {
    await r.connect();
    return ((await r.call('ROLE')) as [string])[0];
  } catch {
    return 'down';
  } finally {
    r.disconnect();
  }
}

describe('chaos: Redis Cluster master failover', () => {
  it(`${N} jobs accepted around a SIGKILL of their queue's master complete once; the old master returns as a replica`, async () => {
    const started = Date.now();
    const { group, producer } = sc;
    const jobs = await makeSources(sc.srcRoot, 'cluster', N, { bigEvery: 20, bigBytes: 6 * 1024 * 1024 });
    await sc.storeProxy.set({ mode: 'delay', ms: 20 });
    await Promise.all([
      group.start('w1', ['worker', '--queues', 'build-artifact', '--concurrency', '3']),
      group.start('w2', ['worker', '--queues', 'build-artifact', '--concurrency', '3']),
    ]);

    // The master holding the queue's slot (all its keys share the tag).
    const waitKey = `${queuePrefix(sc.iso.prefix, 'build-artifact', true)}:build-artifact:wait`;
    const probe = new Redis({ host: '127.0.0.1', port: cluster.all[0]!.port });
    const slot = Number(await probe.call('CLUSTER', 'KEYSLOT', waitKey));
    probe.disconnect();
    const victim = await cluster.masterOf(slot);

    const enqueuing = enqueueThroughOutage(producer, jobs);

    await waitUntil('a third of the jobs accepted', () => enqueuing.accepted >= N / 3, 60_000, 50);
    const acceptedBeforeKill = enqueuing.accepted;
    // Its replica must be in sync to be promoted (the helper waited for that at start; it holds).
    await cluster.waitHealthy();
    await cluster.kill(victim);
    const killedAt = Date.now();
    await waitUntil(
      "the victim's slot served by a promoted replica",
      async () => (await cluster.masterOf(slot).catch(() => victim)) !== victim,
      30_000,
      200,
    ).catch(async (err: Error) => {
      // What the cluster thinks, for the failure's message: who is master, who failed.
      throw new Error(`${err.message}; CLUSTER NODES:\n${await cluster.nodesText().catch((e: Error) => e.message)}`);
    });
    const failoverSeconds = Math.round((Date.now() - killedAt) / 100) / 10;
    const promoted = await cluster.masterOf(slot);
    await enqueuing.done;

    const queue = producer.queue('build-artifact');
    await waitUntil(
      `${N} jobs completed or parked after the failover`,
      async () => ((await queue.getJobCounts('completed')).completed ?? 0) + (await producer.deadLetterQueue().count()) >= N,
      120_000,
      500,
    );
    const recoverySeconds = Math.round((Date.now() - killedAt) / 1000);
    const counts = await queue.getJobCounts('completed', 'failed', 'waiting', 'active', 'delayed');
    const parked = await producer.deadLetterQueue().count();
    const check = await checkArtifacts(sc.s3, sc.db.pool, jobs);
    const survivors = group.alive().length;

    // The old master comes back from its disk and rejoins as a replica of the promoted node.
    await cluster.restart(victim);
    await waitUntil('the old master rejoins as a replica', async () => (await role(victim)) === 'slave', 30_000, 200);
    await cluster.waitHealthy();
    expect(await cluster.masterOf(slot)).toBe(promoted);

    await group.stopAll();
    const logs = expectNoSecrets(group.text(), sc.secrets);
    await recordSummary('redis-cluster-failover', {
      jobs: N,
      acceptedBeforeKill,
      enqueueRefusedDuringFailover: enqueuing.refused,
      failoverSeconds,
      workersSurvived: survivors,
      recoverySeconds,
      parked,
      lost: check.lost.length,
      duplicated: check.duplicated,
      logBytesScanned: logs.bytesScanned,
      seconds: Math.round((Date.now() - started) / 1000),
    });

    expect(survivors).toBe(2);
    expect(check.lost).toEqual([]);
    expect(check).toMatchObject({ objects: N, receipts: N, catalogRows: N, duplicated: 0 });
    expect(counts).toMatchObject({ completed: N - parked, failed: 0, waiting: 0, active: 0, delayed: 0 });
    expect(parked).toBe(0);
  });
});
