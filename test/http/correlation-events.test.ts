/**
 * Following a group of jobs by correlation id, as seed 001's UI followed a build with
 * `/api/builds/:buildId/events`: two jobs enqueued with the same correlationId (one over HTTP, one
 * with the SDK) and one without; `GET /v1/events?correlationId=` streams the first two jobs' events,
 * their completion included, and none of the third's; a reconnect with Last-Event-ID replays the
 * same filtered; another user's token sees none of them. Real Redis, Postgres, radosgw and workers.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { startServer, type RunningServer } from '../../src/http/server.js';
import type { PayloadInput } from '../../src/queues/index.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { isolate } from '../helpers/isolation.js';
import { harness, harnessRuntime, type Harness } from './harness.js';
import { sseClient, type SseEvent } from './sse-client.js';

const iso = isolate('corrsse');
let h: Harness;
let server: RunningServer;
let runtime: Runtime;
let admin: string;

const records = (n: number) => ({ module: 'orders', userId: 'alice', format: 'json', records: [{ n }] }) satisfies PayloadInput<'export'>;
/** The job ids an SSE client saw events of, and the completions among them. */
const jobsOf = (events: SseEvent[]) => new Set(events.map((e) => (e.data as { jobId?: string }).jobId));
const completedOf = (events: SseEvent[]) =>
  events.filter((e) => e.event === 'job_completed').map((e) => (e.data as { data: { jobId: string } }).data.jobId);

beforeAll(async () => {
  h = await harness(iso, { s3: true, config: { http: { port: 0 } } });
  runtime = await harnessRuntime(h, ['export']);
  server = await startServer(h.deps);
  admin = await createToken(h.secret, { user: 'ops', role: 'admin' });
});

afterAll(async () => {
  await server?.close();
  await runtime?.close(2000);
  await h?.close();
  await iso.cleanup();
});

describe('GET /v1/events?correlationId=', () => {
  it("streams the correlated jobs' events to their end, none of another job's, and nothing to another user", {
    timeout: 60_000,
  }, async () => {
    const alice = await createToken(h.secret, { user: 'alice', role: 'user' });
    const bob = await createToken(h.secret, { user: 'bob', role: 'user' });
    const path = '/v1/events?correlationId=order-7';
    const mine = await sseClient(server.url, path, { authorization: `Bearer ${alice}` });
    const theirs = await sseClient(server.url, path, { authorization: `Bearer ${bob}` });
    // Everything on the stream, to show the third job's events were there to be filtered out.
    const all = await sseClient(server.url, '/v1/events', { authorization: `Bearer ${admin}` });
    try {
      const posted = await fetch(`${server.url}/v1/jobs/export`, {
        method: 'POST',
        headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
        body: JSON.stringify({ ...records(1), correlationId: 'order-7' }),
      });
      expect(posted.status).toBe(202);
      const first = (await posted.json()) as { jobId: string; correlationId?: string };
      expect(first.correlationId).toBe('order-7');
      const second = await h.deps.producer.export(records(2), { correlationId: 'order-7' });
      const third = await h.deps.producer.export(records(3));
      expect(third.correlationId).toBeUndefined();
      for (const j of [first, second, third]) await h.deps.producer.waitFor('export', j.jobId, 30_000);

      await mine.until(() => completedOf(mine.events).length === 2, 'both completions', 20_000);
      expect(completedOf(mine.events).sort()).toEqual([first.jobId, second.jobId].sort());
      // Each job's own domain event came too, before its completion, and every event names the id.
      for (const id of [first.jobId, second.jobId]) {
        const names = mine.events.filter((e) => (e.data as { jobId?: string }).jobId === id).map((e) => e.event);
        expect(names).toEqual(['export_completed', 'job_completed']);
      }
      expect(mine.events.every((e) => (e.data as { correlationId?: string }).correlationId === 'order-7')).toBe(true);
      const done = mine.events.find((e) => e.event === 'job_completed')!.data as { data: { result: { key?: string } } };
      expect(done.data.result.key).toMatch(/^records\/orders\/alice\//);

      await all.until(() => jobsOf(all.events).has(third.jobId), "the third job's event");
      expect(jobsOf(mine.events).has(third.jobId)).toBe(false);
      // Bob's stream was open the whole time and got nothing of Alice's jobs.
      expect(theirs.events).toEqual([]);

      // A reconnect from the start (Last-Event-ID) replays the same, filtered the same.
      const again = await sseClient(server.url, path, { authorization: `Bearer ${alice}`, 'last-event-id': '0-0' });
      try {
        await again.until(() => completedOf(again.events).length === 2, 'the replayed completions');
        expect(again.events.map((e) => e.id)).toEqual(mine.events.map((e) => e.id));
      } finally {
        await again.close();
      }
      const bobAgain = await sseClient(server.url, path, { authorization: `Bearer ${bob}`, 'last-event-id': '0-0' });
      try {
        // The replay is sent before anything live: half a second is ample for it to arrive.
        await new Promise((r) => setTimeout(r, 500));
        expect(bobAgain.events).toEqual([]);
      } finally {
        await bobAgain.close();
      }
    } finally {
      await Promise.all([mine.close(), theirs.close(), all.close()]);
    }
  });

  it('a build artifact defaults to its buildId, else its versionId; the id is kept off the job id', async () => {
    const base = { userId: 'alice', projectId: 'site', buildDir: process.cwd() };
    const withBuild = await h.deps.producer.buildArtifact({ ...base, versionId: 'v-1', buildId: 'build-9' }, { delay: 600_000 });
    expect(withBuild.correlationId).toBe('build-9');
    const withoutBuild = await h.deps.producer.buildArtifact({ ...base, versionId: 'v-2' }, { delay: 600_000 });
    expect(withoutBuild.correlationId).toBe('v-2');
    // The same unit of work under another correlation id is still the same job.
    const again = await h.deps.producer.buildArtifact({ ...base, versionId: 'v-2' }, { delay: 600_000, correlationId: 'other' });
    expect(again).toMatchObject({ jobId: withoutBuild.jobId, created: false });
    const job = await h.deps.producer.queue('build-artifact').getJob(withBuild.jobId);
    expect(job?.opts).toMatchObject({ correlationId: 'build-9' });
    await h.deps.producer.queue('build-artifact').obliterate({ force: true });
  });

  it('refuses a bad correlation id, naming it, at enqueue (SDK and HTTP) and on the stream', async () => {
    await expect(h.deps.producer.export(records(4), { correlationId: '../x' })).rejects.toThrow(/correlationId: must not contain/);
    const posted = await fetch(`${server.url}/v1/jobs/export`, {
      method: 'POST',
      headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
      body: JSON.stringify({ ...records(5), correlationId: 42 }),
    });
    expect(posted.status).toBe(400);
    expect(JSON.stringify(await posted.json())).toContain('correlationId: expected a string, got number');
    const stream = await fetch(`${server.url}/v1/events?correlationId=${encodeURIComponent('a/b')}`, {
      headers: { authorization: `Bearer ${admin}` },
    });
    expect(stream.status).toBe(400);
    expect(((await stream.json()) as { error: { message: string } }).error.message).toBe('correlationId: must not contain / or \\');
    // Nothing was enqueued by the refused requests: the export queue holds the first test's three.
    expect(await h.deps.producer.queue('export').getJobCountByTypes('completed', 'waiting', 'active', 'delayed', 'failed')).toBe(3);
  });
});
