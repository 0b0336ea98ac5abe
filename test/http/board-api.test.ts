/**
 * Bull Board's API and /metrics on one Redis and on Redis Cluster: the board's reads (counts, jobs,
 * Redis info) and an action (pause, resume) run BullMQ scripts per queue, which a queue split over
 * slots would refuse with CROSSSLOT.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildServer, type StowageServer } from '../../src/http/server.js';
import { QUEUE_NAMES } from '../../src/queues/index.js';
import { isolate } from '../helpers/isolation.js';
import { redisVariants } from '../helpers/redis-cluster.js';
import { basicHeader, harness, type Harness } from './harness.js';

describe.each(await redisVariants())('on $name Redis', (variant) => {
  const iso = isolate('boardapi', variant);
  let h: Harness;
  let app: StowageServer;

  beforeAll(async () => {
    h = await harness(iso);
    app = buildServer(h.deps);
    await app.ready();
  });
  afterAll(async () => {
    await app?.close();
    await h?.close();
    await iso.cleanup();
  });

  const board = (method: 'GET' | 'PUT', url: string) =>
    app.inject({ method, url: `/admin/queues/api${url}`, headers: { authorization: basicHeader() } });

  it('lists every queue with its counts, and shows a waiting job', async () => {
    const { jobId } = await h.deps.producer.enqueue('export', { module: 'm', userId: 'u', format: 'json', records: [{ a: 1 }] });
    const res = await board('GET', '/queues?activeQueue=export&status=waiting&page=1');
    expect(res.statusCode, res.body).toBe(200);
    const body = res.json() as { queues: { name: string; counts: Record<string, number>; jobs: { id: string }[] }[] };
    expect(body.queues.map((q) => q.name).sort()).toEqual([...QUEUE_NAMES].sort());
    const exportQueue = body.queues.find((q) => q.name === 'export')!;
    expect(exportQueue.counts.waiting).toBe(1);
    expect(exportQueue.jobs.map((j) => j.id)).toEqual([jobId]);
  });

  it("shows Redis's stats (a keyless INFO, answered by one node of a cluster)", async () => {
    const res = await board('GET', '/redis/stats');
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json()).toHaveProperty('version');
  });

  it('pauses and resumes a queue from the board', async () => {
    expect((await board('PUT', '/queues/cleanup/pause')).statusCode).toBe(200);
    expect(await h.queue('cleanup').isPaused()).toBe(true);
    expect((await board('PUT', '/queues/cleanup/resume')).statusCode).toBe(200);
    expect(await h.queue('cleanup').isPaused()).toBe(false);
  });

  it('/metrics answers with every queue', async () => {
    const res = await app.inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(200);
    for (const name of QUEUE_NAMES) expect(res.body).toContain(`queue="${name}"`);
  });
});
