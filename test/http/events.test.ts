/**
 * Live events over SSE against a listening server, real Redis and Postgres, and an in-process
 * worker runtime: a job's progress, domain events and outcome in order; the domain-event feed with
 * its type filter and reconnect; auth, heartbeats and clean-up.
 */
import type { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import type { Db } from '../../src/db/pool.js';
import { PermanentError } from '../../src/errors.js';
import { buildServer, startServer, type RunningServer } from '../../src/http/server.js';
import { createLogger } from '../../src/observability/logger.js';
import { createEventStream, createRedis, redisKeys, type PayloadInput } from '../../src/queues/index.js';
import { startRuntime, type Runtime } from '../../src/workers/runtime.js';
import { migratedDb } from '../helpers/fleet.js';
import { isolate } from '../helpers/isolation.js';
import { harness, type Harness } from './harness.js';
import { sseClient } from './sse-client.js';
import { recordsJob, standInResult } from '../helpers/export-data.js';
import { redisVariants } from '../helpers/redis-cluster.js';

// The same behaviour on one Redis and on a 3-master Redis Cluster (a hash tag per queue).
describe.each(await redisVariants())('on $name Redis', (variant) => {
  const iso = isolate('httpevents', variant);
  const HEARTBEAT_MS = 300;
  let h: Harness;
  let server: RunningServer;
  let db: Db;
  let runtime: Runtime;
  let viewer: string;

  /** A job waits on its gate (by record `n`) until the test opens it, so a client can subscribe first. */
  const gates = new Map<number, { open: () => void; opened: Promise<void> }>();
  function gate(n: number): () => void {
    let open!: () => void;
    const opened = new Promise<void>((resolve) => (open = resolve));
    gates.set(n, { open, opened });
    return open;
  }

  const exportJob = (n: number, extra: Record<string, unknown> = {}) =>
    ({ module: 'reports', userId: 'u1', format: 'json', records: [{ n, ...extra }] }) satisfies PayloadInput<'export'>;

  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

  /**
   * CLIENT KILL every Redis connection whose name matches; returns how many. On the cluster, on the
   * master serving `key`: where the reader blocks on it (the Cluster keeps idle links to the others).
   */
  async function killClients(match: (name: string) => boolean, key: string): Promise<number> {
    const redis = h.deps.redis;
    let nodes = [redis];
    if (variant.name === 'cluster') {
      const port = await variant.cluster.masterOf(Number(await redis.call('CLUSTER', 'KEYSLOT', key)));
      nodes = (redis as unknown as Cluster).nodes('master').filter((n) => n.options.port === port) as Redis[];
    }
    let killed = 0;
    for (const node of nodes) {
      const list = (await node.client('LIST')) as string;
      const ids = [...list.matchAll(/^id=(\d+) .*\bname=(\S*)/gm)].filter((m) => match(m[2]!)).map((m) => m[1]!);
      for (const id of ids) await node.client('KILL', 'ID', id);
      killed += ids.length;
    }
    return killed;
  }
  const errorCode = async (res: Response) => ((await res.json()) as { error: { code: string } }).error.code;

  /** Enqueue a gated job and wait until a worker holds it, so the client's snapshot says `active`. */
  async function activeJob(n: number, extra: Record<string, unknown> = {}): Promise<{ jobId: string; open: () => void }> {
    const open = gate(n);
    const { jobId } = await h.deps.producer.enqueue('export', exportJob(n, extra));
    const deadline = Date.now() + 10_000;
    while ((await h.queue('export').getJobState(jobId)) !== 'active') {
      if (Date.now() > deadline) throw new Error(`job ${jobId} never became active`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return { jobId, open };
  }

  beforeAll(async () => {
    h = await harness(iso, { config: { http: { host: '127.0.0.1', port: 0 } } });
    server = await startServer(h.deps, { events: { heartbeatMs: HEARTBEAT_MS } });
    db = await migratedDb(h.deps.config);
    runtime = await startRuntime({
      config: h.deps.config,
      db,
      kinds: ['export'],
      maintenance: false,
      logger: createLogger({ level: 'silent' }),
      metrics: h.deps.metrics,
      processors: {
        export: async (job, ctx) => {
          const first = recordsJob(job.data).records[0] as { n: number; fail?: boolean };
          await gates.get(first.n)?.opened;
          // Two stages: the runtime's throttle always lets a stage change through.
          await ctx.progress({ stage: 'read', bytes: 0, totalBytes: 100 });
          await ctx.progress({ stage: 'write', bytes: 100, totalBytes: 100 });
          if (first.fail) throw new PermanentError(`record ${first.n} is refused`);
          const key = `exports/reports/${first.n}.json`;
          await ctx.emit('export_completed', {
            module: recordsJob(job.data).module,
            userId: recordsJob(job.data).userId,
            key,
            records: recordsJob(job.data).records.length,
          });
          return standInResult(String(first.n), { key, record_count: recordsJob(job.data).records.length });
        },
      },
    });
    viewer = await createToken(h.secret, { user: 'victor', role: 'viewer' });
  });

  afterAll(async () => {
    await runtime?.close(2000);
    await server?.close();
    await db?.close();
    await h?.close();
    await iso.cleanup();
  });

  describe('GET /v1/jobs/:kind/:id/events', () => {
    it("streams progress, the job's domain event and completed, in order, then ends", async () => {
      const { jobId, open } = await activeJob(1);
      const client = await sseClient(server.url, `/v1/jobs/export/${jobId}/events`, bearer(viewer));
      expect(client.res.status).toBe(200);
      expect(client.res.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
      // The snapshot comes first; from then on nothing is missed.
      await client.until(() => client.events.length > 0, 'the state snapshot');
      expect(client.events[0]).toMatchObject({ event: 'state', data: { jobId, state: 'active' } });
      open();
      await client.finished();
      expect(
        client.events.map((e) => e.event),
        JSON.stringify(client.events),
      ).toEqual(['state', 'progress', 'progress', 'export_completed', 'completed']);
      const [, read, write, domain, completed] = client.events;
      expect(read!.data).toEqual({ jobId, progress: { stage: 'read', bytes: 0, totalBytes: 100 } });
      expect(write!.data).toEqual({ jobId, progress: { stage: 'write', bytes: 100, totalBytes: 100 } });
      expect(domain).toMatchObject({
        id: expect.stringMatching(/^\d+-\d+$/),
        data: { type: 'export_completed', queue: 'export', jobId, data: { key: 'exports/reports/1.json', records: 1 } },
      });
      expect(completed).toEqual({
        event: 'completed',
        id: 'done',
        data: { jobId, result: standInResult('1', { key: 'exports/reports/1.json' }) },
      });
    });

    it('still sends the domain event before completed when the shared domain reader lags', async () => {
      const { jobId, open } = await activeJob(4);
      const client = await sseClient(server.url, `/v1/jobs/export/${jobId}/events`, bearer(viewer));
      await client.until(() => client.events.length > 0, 'the state snapshot');
      // Cut the reader's connection: it reconnects after a back-off, well after the job finished, so
      // the event can only come from the read of the domain stream made on completed.
      expect(
        await killClients((name) => name === `stowage:http:events:${h.deps.config.prefix}`, redisKeys.events(h.deps.config.prefix)),
      ).toBe(1);
      open();
      await client.finished();
      expect(
        client.events.map((e) => e.event),
        JSON.stringify(client.events),
      ).toEqual(['state', 'progress', 'progress', 'export_completed', 'completed']);
    });

    it('still sends progress before the domain event when the job-lifecycle reader lags', async () => {
      const { jobId, open } = await activeJob(5);
      const client = await sseClient(server.url, `/v1/jobs/export/${jobId}/events`, bearer(viewer));
      await client.until(() => client.events.length > 0, 'the state snapshot');
      // The QueueEvents reader's blocking connection (BullMQ names it `<prefix>:<base64 queue>:qe`):
      // the domain event now arrives first, and progress must be read from BullMQ's stream before it.
      const exportQueue = h.queue('export');
      const qe = `${exportQueue.opts.prefix}:${Buffer.from('export').toString('base64')}:qe`;
      // On a cluster BullMQ's CLIENT SETNAME lands on one random node; Stowage's connectionName is on every one.
      const ours = 'stowage:http:queue-events:export';
      expect(await killClients((name) => name === qe || name === ours, exportQueue.keys.events!)).toBeGreaterThanOrEqual(1);
      open();
      await client.finished();
      expect(
        client.events.map((e) => e.event),
        JSON.stringify(client.events),
      ).toEqual(['state', 'progress', 'progress', 'export_completed', 'completed']);
    });

    it('streams failed with the reason for a job that fails for good, then job_parked once the runtime parks it', async () => {
      const { jobId, open } = await activeJob(2, { fail: true });
      const client = await sseClient(server.url, `/v1/jobs/export/${jobId}/events`, bearer(viewer));
      await client.until(() => client.events.length > 0, 'the state snapshot');
      open();
      await client.finished();
      expect(client.events.map((e) => e.event)).toEqual(['state', 'progress', 'progress', 'failed', 'job_parked']);
      expect(client.events[3]).toEqual({ event: 'failed', data: { jobId, failedReason: expect.stringContaining('record 2 is refused') } });
      expect(client.events[4]).toMatchObject({
        id: 'done',
        data: { jobId, queue: 'export', reason: 'permanent', attemptsMade: 1, deadLetterId: `export--${jobId}` },
      });
    });

    it('for a finished job: its earlier domain events, the final state, the result; 204 once the client saw the end', async () => {
      const { jobId } = await h.deps.producer.enqueue('export', exportJob(3));
      await h.deps.producer.waitFor('export', jobId, 10_000);
      const client = await sseClient(server.url, `/v1/jobs/export/${jobId}/events`, bearer(viewer));
      await client.finished();
      expect(client.events.map((e) => e.event)).toEqual(['export_completed', 'state', 'completed']);
      expect(client.events[1]!.data).toMatchObject({ state: 'completed', progress: { stage: 'write', bytes: 100 } });
      expect(client.events[2]!.data).toEqual({ jobId, result: standInResult('3', { key: 'exports/reports/3.json' }) });

      // EventSource reconnects after a stream ends, sending the last id it saw: 204 stops it.
      const again = await fetch(`${server.url}/v1/jobs/export/${jobId}/events`, {
        headers: { ...bearer(viewer), 'last-event-id': 'done' },
      });
      expect(again.status).toBe(204);
    });

    it('401 without a token; 404 for an unknown kind or job', async () => {
      const none = await fetch(`${server.url}/v1/jobs/export/export.x/events`);
      expect(none.status).toBe(401);
      expect(none.headers.get('www-authenticate')).toMatch(/^Bearer/);
      expect(await errorCode(none)).toBe('STOWAGE_ERR_UNAUTHORIZED');
      const kind = await fetch(`${server.url}/v1/jobs/nope/1/events`, { headers: bearer(viewer) });
      expect(kind.status).toBe(404);
      expect(await errorCode(kind)).toBe('STOWAGE_ERR_UNKNOWN_KIND');
      const job = await fetch(`${server.url}/v1/jobs/export/export.nope/events`, { headers: bearer(viewer) });
      expect(job.status).toBe(404);
      expect(await errorCode(job)).toBe('STOWAGE_ERR_NOT_FOUND');
    });
  });

  describe('GET /v1/events', () => {
    it('follows domain events live, filtered by type, with heartbeats; resumes after Last-Event-ID', async () => {
      const redis = createRedis(h.deps.config);
      const stream = createEventStream(redis, h.deps.config.prefix);
      try {
        const client = await sseClient(server.url, '/v1/events?type=export_completed,backup_completed', bearer(viewer));
        expect(client.res.status).toBe(200);
        // Headers mean subscribed: everything emitted from now on arrives.
        const first = await stream.emit('export_completed', { module: 'm', userId: 'u', key: 'k1', records: 1 });
        await stream.emit('job_parked', { queue: 'export', jobId: 'j', name: 'n', reason: 'r', attempts: 1 });
        const second = await stream.emit('backup_completed', { set: 's', key: 'k2', size: 1, sha256: 'x', databases: 1 });
        await client.until(() => client.events.length >= 2, 'two events');
        expect(client.events).toEqual([
          {
            event: 'export_completed',
            id: first,
            data: expect.objectContaining({ id: first, type: 'export_completed', data: expect.objectContaining({ key: 'k1' }) }),
          },
          { event: 'backup_completed', id: second, data: expect.objectContaining({ id: second, type: 'backup_completed' }) },
        ]);
        await client.until(() => client.comments.includes('heartbeat'), 'a heartbeat', HEARTBEAT_MS * 10);
        await client.close();

        // A reconnect after `first` gets what came since (filter still applied), then goes on live.
        const resumed = await sseClient(server.url, '/v1/events?type=backup_completed', { ...bearer(viewer), 'last-event-id': first });
        await resumed.until(() => resumed.events.length >= 1, 'the missed event');
        const third = await stream.emit('backup_completed', { set: 's', key: 'k3', size: 1, sha256: 'x', databases: 1 });
        await resumed.until(() => resumed.events.length >= 2, 'the live event');
        expect(resumed.events.map((e) => e.id)).toEqual([second, third]);
        await resumed.close();
      } finally {
        redis.disconnect();
      }
    });

    it("a user token sees only its own user's events, jobs and job streams; another user's job is 404", async () => {
      const redis = createRedis(h.deps.config);
      const stream = createEventStream(redis, h.deps.config.prefix);
      const u1 = await createToken(h.secret, { user: 'u1', role: 'user' });
      const u2 = await createToken(h.secret, { user: 'u2', role: 'user' });
      try {
        const mine = await sseClient(server.url, '/v1/events', bearer(u1));
        const operator = await sseClient(server.url, '/v1/events', bearer(viewer));
        await stream.emit('export_completed', { module: 'm', userId: 'u2', key: 'theirs', records: 1 });
        await stream.emit('job_parked', { queue: 'export', jobId: 'j', name: 'n', reason: 'r', attempts: 1 });
        const own = await stream.emit('export_completed', { module: 'm', userId: 'u1', key: 'mine', records: 1 });
        await operator.until(() => operator.events.length >= 3, 'all three events for the operator');
        await mine.until(() => mine.events.some((e) => e.id === own), "the user's own event");
        // Emitted in order on one stream: had the others been sent, they would have come first.
        expect(mine.events.map((e) => e.id)).toEqual([own]);
        await mine.close();
        await operator.close();

        // Jobs of exportJob belong to u1: u2 gets 404 for the job and its stream, u1 gets both.
        const { jobId } = await h.deps.producer.enqueue('export', exportJob(40));
        await h.deps.producer.waitFor('export', jobId, 10_000);
        for (const path of [`/v1/jobs/export/${jobId}`, `/v1/jobs/export/${jobId}/events`]) {
          const other = await fetch(`${server.url}${path}`, { headers: bearer(u2) });
          expect(other.status, path).toBe(404);
          expect(await errorCode(other)).toBe('STOWAGE_ERR_NOT_FOUND');
        }
        const status = await fetch(`${server.url}/v1/jobs/export/${jobId}`, { headers: bearer(u1) });
        expect(status.status).toBe(200);
        expect(await status.json()).toMatchObject({ jobId, state: 'completed' });
        const own2 = await sseClient(server.url, `/v1/jobs/export/${jobId}/events`, bearer(u1));
        await own2.finished();
        expect(own2.events.map((e) => e.event)).toEqual(['export_completed', 'state', 'completed']);

        // Users don't get the operators' board.
        const board = await fetch(`${server.url}/admin/queues`, { headers: bearer(u1), redirect: 'manual' });
        expect(board.status).toBe(403);
      } finally {
        redis.disconnect();
      }
    });

    it('401 without a token; 400 for a malformed type', async () => {
      const none = await fetch(`${server.url}/v1/events`);
      expect(none.status).toBe(401);
      const bad = await fetch(`${server.url}/v1/events?type=DROP%20TABLE`, { headers: bearer(viewer) });
      expect(bad.status).toBe(400);
      expect(await errorCode(bad)).toBe('STOWAGE_ERR_USAGE');
    });

    it('refuses a stream past events.maxClients with 503 and Retry-After, and admits one again when a client leaves', async () => {
      const small = buildServer(h.deps, { events: { maxClients: 2 } });
      await small.listen({ host: '127.0.0.1', port: 0 });
      const url = `http://127.0.0.1:${(small.server.address() as { port: number }).port}`;
      try {
        const a = await sseClient(url, '/v1/events', bearer(viewer));
        const b = await sseClient(url, '/v1/events', bearer(viewer));
        const refused = await fetch(`${url}/v1/events`, { headers: bearer(viewer) });
        expect(refused.status).toBe(503);
        expect(refused.headers.get('retry-after')).toBe('5');
        expect(await errorCode(refused)).toBe('STOWAGE_ERR_BUSY');
        await a.close();
        const deadline = Date.now() + 5000;
        let again: Response;
        // The server notices the disconnect asynchronously.
        for (;;) {
          again = await fetch(`${url}/v1/events`, { headers: bearer(viewer) });
          if (again.status === 200 || Date.now() > deadline) break;
          await again.body?.cancel();
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        expect(again.status).toBe(200);
        await again.body?.cancel();
        await b.close();
      } finally {
        await small.close();
      }
    });

    it('forgets a client that disconnects, and server close ends open streams', async () => {
      const before = h.logLines.filter((l) => l.includes('"event stream closed"')).length;
      const client = await sseClient(server.url, '/v1/events', bearer(viewer));
      await client.close();
      await client.until(() => h.logLines.filter((l) => l.includes('"event stream closed"')).length > before, 'the server to notice');

      // A second server on the same deps: closing it must not wait for its open streams.
      const other = buildServer(h.deps);
      await other.listen({ host: '127.0.0.1', port: 0 });
      const { port } = other.server.address() as { port: number };
      const res = await fetch(`http://127.0.0.1:${port}/v1/events`, { headers: bearer(viewer) });
      expect(res.status).toBe(200);
      const started = Date.now();
      await other.close();
      expect(Date.now() - started).toBeLessThan(3000);
      // The client sees the end of the stream.
      const reader = res.body!.getReader();
      for (;;) if ((await reader.read()).done) break;
    });
  });
});
