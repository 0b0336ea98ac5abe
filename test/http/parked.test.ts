/**
 * A job's fate is readable to the end: a build-artifact job whose buildDir is missing fails for good
 * and is parked by the real worker runtime. GET, the job's SSE stream (live and afterwards) and the
 * SDK's waitFor all say so, with the reason, the attempts and the dead-letter id; another user's
 * token gets 404; after a redrive the same id shows the live job again. Real Redis, Postgres,
 * radosgw, runtime.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { JobParkedError } from '../../src/errors.js';
import { buildServer, startServer, type RunningServer } from '../../src/http/server.js';
import { parkedJobId } from '../../src/queues/index.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { isolate } from '../helpers/isolation.js';
import { harness, harnessRuntime, type Harness } from './harness.js';
import { sseClient } from './sse-client.js';

const iso = isolate('parked');
let h: Harness;
let server: RunningServer;
let runtime: Runtime;
let root: string;
let alice: string;
let bob: string;
let viewer: string;

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const errorCode = async (res: Response) => ((await res.json()) as { error: { code: string } }).error.code;

beforeAll(async () => {
  h = await harness(iso, { s3: true, config: { http: { host: '127.0.0.1', port: 0 } } });
  server = await startServer(h.deps);
  runtime = await harnessRuntime(h, ['build-artifact'], { maintenance: false });
  root = await mkdtemp(join(tmpdir(), 'stowage-parked-'));
  alice = await createToken(h.secret, { user: 'alice', role: 'user' });
  bob = await createToken(h.secret, { user: 'bob', role: 'user' });
  viewer = await createToken(h.secret, { user: 'victor', role: 'viewer' });
});

afterAll(async () => {
  await server?.close();
  await runtime?.close(2000);
  await h?.close();
  await rm(root, { recursive: true, force: true });
  await iso.cleanup();
});

describe('a parked job', () => {
  // Missing until the redrive test creates it.
  let buildDir: string;
  let jobId: string;
  let deadLetterId: string;

  it('ends its live stream with failed then job_parked, and waitFor rejects with JobParkedError', async () => {
    buildDir = join(root, 'site');
    // Delayed, so the stream and waitFor are following before the attempt fails.
    ({ jobId } = await h.deps.producer.buildArtifact(
      { userId: 'alice', projectId: 'site', versionId: 'v1', buildDir },
      { delay: 1000, attempts: 1 },
    ));
    deadLetterId = parkedJobId('build-artifact', jobId);
    const live = await sseClient(server.url, `/v1/jobs/build-artifact/${jobId}/events`, bearer(alice));
    expect(live.res.status).toBe(200);
    await live.until(() => live.events.length > 0, 'the state snapshot');
    expect(live.events[0]).toMatchObject({ event: 'state', data: { jobId, state: 'delayed' } });
    const waited = h.deps.producer.waitFor('build-artifact', jobId, 60_000).then(
      () => undefined,
      (err: unknown) => err,
    );

    await live.finished();
    const names = live.events.map((e) => e.event);
    expect(names.slice(-2), JSON.stringify(live.events)).toEqual(['failed', 'job_parked']);
    expect(names.filter((n) => n === 'job_parked')).toHaveLength(1);
    const [failed, parked] = live.events.slice(-2);
    expect(failed!.id).toBeUndefined();
    expect(failed!.data).toMatchObject({ jobId, failedReason: expect.stringContaining('buildDir') });
    expect(parked).toEqual({
      event: 'job_parked',
      id: 'done',
      data: {
        jobId,
        queue: 'build-artifact',
        reason: 'permanent',
        attemptsMade: 1,
        deadLetterId,
        parkedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
        error: { name: 'PermanentError', code: 'STOWAGE_ERR_PERMANENT', message: expect.stringContaining('does not exist') },
      },
    });
    expect(live.lastEventId).toBe('done');

    const err = await waited;
    expect(err).toBeInstanceOf(JobParkedError);
    expect(err).toMatchObject({
      code: 'STOWAGE_ERR_JOB_FAILED',
      jobId,
      queue: 'build-artifact',
      reason: 'permanent',
      attemptsMade: 1,
      deadLetterId,
      error: { name: 'PermanentError', code: 'STOWAGE_ERR_PERMANENT' },
    });
    expect((err as Error).message).toContain(deadLetterId);
  });

  it('reads as parked afterwards: GET, the stream (state parked, job_parked, end), waitFor; 404 for another user', async () => {
    const res = await fetch(`${server.url}/v1/jobs/build-artifact/${jobId}`, { headers: bearer(alice) });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({
      jobId,
      state: 'parked',
      attemptsMade: 1,
      parked: { reason: 'permanent', deadLetterId, error: { name: 'PermanentError', code: 'STOWAGE_ERR_PERMANENT' } },
    });

    for (const token of [alice, viewer]) {
      const after = await sseClient(server.url, `/v1/jobs/build-artifact/${jobId}/events`, bearer(token));
      expect(after.res.status).toBe(200);
      await after.finished();
      expect(after.events.map((e) => e.event)).toEqual(['state', 'job_parked']);
      expect(after.events[0]!.data).toEqual({ jobId, state: 'parked', progress: null, attemptsMade: 1 });
      expect(after.events[1]).toMatchObject({ id: 'done', data: { jobId, reason: 'permanent', attemptsMade: 1, deadLetterId } });
    }
    // EventSource's reconnect after the end is told to stop.
    const again = await fetch(`${server.url}/v1/jobs/build-artifact/${jobId}/events`, {
      headers: { ...bearer(alice), 'last-event-id': 'done' },
    });
    expect(again.status).toBe(204);

    await expect(h.deps.producer.waitFor('build-artifact', jobId, 60_000)).rejects.toMatchObject({
      name: 'JobParkedError',
      reason: 'permanent',
      attemptsMade: 1,
      deadLetterId,
    });

    for (const path of [`/v1/jobs/build-artifact/${jobId}`, `/v1/jobs/build-artifact/${jobId}/events`]) {
      const other = await fetch(`${server.url}${path}`, { headers: bearer(bob) });
      expect(other.status, path).toBe(404);
      expect(await errorCode(other)).toBe('STOWAGE_ERR_NOT_FOUND');
    }
  });

  it('after a redrive, the same id shows the live job again: GET, the stream and waitFor', async () => {
    await mkdir(buildDir, { recursive: true });
    await writeFile(join(buildDir, 'index.html'), '<h1>back</h1>\n');
    const outcomes = await runtime.deadLetter.redrive({ ids: [deadLetterId] });
    expect(outcomes).toEqual([expect.objectContaining({ id: deadLetterId, action: 'redriven' })]);

    const res = await fetch(`${server.url}/v1/jobs/build-artifact/${jobId}`, { headers: bearer(alice) });
    expect(res.status).toBe(200);
    const view = (await res.json()) as { jobId: string; state: string; parked?: unknown };
    expect(view.jobId).toBe(jobId);
    expect(view.state).not.toBe('parked');
    expect(view.parked).toBeUndefined();

    const stream = await sseClient(server.url, `/v1/jobs/build-artifact/${jobId}/events`, bearer(alice));
    expect(stream.res.status).toBe(200);
    await stream.finished();
    const names = stream.events.map((e) => e.event);
    expect(names.at(-1), JSON.stringify(stream.events)).toBe('completed');
    expect(names).not.toContain('job_parked');
    expect(names).toContain('job_redriven');

    const result = await h.deps.producer.waitFor('build-artifact', jobId, 60_000);
    expect(result).toMatchObject({ sha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
    const done = await fetch(`${server.url}/v1/jobs/build-artifact/${jobId}`, { headers: bearer(alice) });
    expect(await done.json()).toMatchObject({ jobId, state: 'completed' });
  });
});

describe('a job that fails for good and is not parked', () => {
  it("ends its stream after failed with a bare id: done, once the park's grace is over", async () => {
    // A plain BullMQ worker parks nothing: the job stays in the failed set.
    const connection = h.deps.redis.duplicate({ maxRetriesPerRequest: null });
    const worker = new Worker(
      'cleanup',
      async () => {
        throw new Error('no runtime parks this');
      },
      { connection, prefix: h.deps.config.prefix },
    );
    const quick = buildServer(h.deps, { events: { parkGraceMs: 200 } });
    await quick.listen({ host: '127.0.0.1', port: 0 });
    const url = `http://127.0.0.1:${(quick.server.address() as { port: number }).port}`;
    try {
      const job = await h.queue('cleanup').add('cleanup', { mode: 'multipart' }, { jobId: 'cleanup.unparked', attempts: 1 });
      const deadline = Date.now() + 10_000;
      while ((await job.getState()) !== 'failed') {
        if (Date.now() > deadline) throw new Error('the job never failed');
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      const client = await sseClient(url, '/v1/jobs/cleanup/cleanup.unparked/events', bearer(viewer));
      await client.finished();
      expect(client.events.map((e) => e.event)).toEqual(['state', 'failed']);
      expect(client.events[1]!.data).toEqual({ jobId: 'cleanup.unparked', failedReason: 'no runtime parks this' });
      // No event carries it, yet EventSource would reconnect with it, and be told to stop.
      expect(client.lastEventId).toBe('done');
    } finally {
      await quick.close();
      await worker.close();
      connection.disconnect();
    }
  });
});
