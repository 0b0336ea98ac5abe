/**
 * The bounds of the SSE endpoints against a listening server, real Redis and Postgres: the
 * server's stream cap holds under concurrent connections, one caller cannot take every slot (429),
 * slots come back on every way a request ends, and a stream that reaches its lifetime ends so that
 * EventSource's reconnect (Last-Event-ID) resumes without losing an event, for the all-events
 * stream and a job's stream.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { buildServer, type StowageServer } from '../../src/http/server.js';
import type { EventRoutesOptions } from '../../src/http/events.js';
import { createEventStream, createRedis, type EventStream } from '../../src/queues/index.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { recordsJob, standInResult } from '../helpers/export-data.js';
import { isolate } from '../helpers/isolation.js';
import { harness, harnessRuntime, type Harness } from './harness.js';
import { sseClient } from './sse-client.js';

const iso = isolate('sselimits');
let h: Harness;
let runtime: Runtime;
let viewer: string;
let redis: ReturnType<typeof createRedis>;
let stream: EventStream;
const servers: StowageServer[] = [];

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const body = async (res: Response) => (await res.json()) as { error: { code: string; message: string } };

/** A job waits here (by its record's `name`) between its two domain events, until the test opens it. */
const gates = new Map<string, { open: () => void; opened: Promise<void> }>();
function gate(name: string): () => void {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  gates.set(name, { open, opened });
  return open;
}

/** A server on the harness's deps with these event-route options, listening on a free port. */
async function serve(events: EventRoutesOptions): Promise<{ url: string; app: StowageServer }> {
  const app = buildServer(h.deps, { events });
  await app.listen({ host: '127.0.0.1', port: 0 });
  servers.push(app);
  return { url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}`, app };
}

/** `n` requests at once; the admitted streams stay open until closed. */
async function burst(url: string, path: string, headers: Record<string, string>, n: number) {
  const controllers = Array.from({ length: n }, () => new AbortController());
  const answers = await Promise.all(controllers.map((c) => fetch(`${url}${path}`, { headers, signal: c.signal })));
  return {
    answers,
    count: (status: number) => answers.filter((r) => r.status === status).length,
    async close() {
      for (const c of controllers) c.abort();
      await Promise.all(answers.map((r) => r.body?.cancel().catch(() => {})));
    },
  };
}

/** Resolves once the server logged `n` more closed streams than `before`. */
async function closedStreams(before: number, n: number) {
  const count = () => h.logLines.filter((l) => l.includes('"event stream closed"')).length;
  const deadline = Date.now() + 10_000;
  while (count() < before + n) {
    if (Date.now() > deadline) throw new Error(`the server noticed ${count() - before} of ${n} closed streams`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
const closedSoFar = () => h.logLines.filter((l) => l.includes('"event stream closed"')).length;

beforeAll(async () => {
  h = await harness(iso);
  runtime = await harnessRuntime(h, ['export'], {
    maintenance: false,
    processors: {
      export: async (job, ctx) => {
        const { module, userId, records } = recordsJob(job.data);
        const name = String((records[0] as { name: string }).name);
        await ctx.emit('export_completed', { module, userId, key: `${name}/a`, records: 1 });
        await gates.get(name)?.opened;
        await ctx.emit('export_completed', { module, userId, key: `${name}/b`, records: 1 });
        return standInResult(name, { key: `${name}/b` });
      },
    },
  });
  viewer = await createToken(h.secret, { user: 'victor', role: 'viewer' });
  redis = createRedis(h.deps.config.redisUrl);
  stream = createEventStream(redis, h.deps.config.prefix);
});

afterAll(async () => {
  for (const app of servers) await app.close();
  await runtime?.close(2000);
  redis?.disconnect();
  await h?.close();
  await iso.cleanup();
});

describe('events.maxClients', () => {
  it('admits exactly the cap out of 60 concurrent connections (the rest 503), and gives every slot back', async () => {
    const { url } = await serve({ maxClients: 20, maxClientsPerCaller: 1000 });
    const all = await burst(url, '/v1/events', bearer(viewer), 60);
    expect([all.count(200), all.count(503)]).toEqual([20, 40]);
    const refused = all.answers.find((r) => r.status === 503)!;
    expect(refused.headers.get('retry-after')).toBe('5');
    expect((await body(refused)).error.code).toBe('STOWAGE_ERR_BUSY');
    let before = closedSoFar();
    await all.close();
    await closedStreams(before, 20);

    // A refused request gives its slot back: more requests for a job that does not exist than there
    // are slots, one after another (at once, some would find every slot held by the others' reads).
    for (let i = 0; i < 25; i++) {
      const missing = await fetch(`${url}/v1/jobs/export/export.none/events`, { headers: bearer(viewer) });
      expect(missing.status).toBe(404);
      await missing.body?.cancel();
    }
    const open = gate('held');
    const { jobId: held } = await h.deps.producer.enqueue('export', {
      module: 'm',
      userId: 'u1',
      format: 'json',
      records: [{ name: 'held' }],
    });
    try {
      // A job's stream takes more reads before it opens: the same bound.
      const jobs = await burst(url, `/v1/jobs/export/${held}/events`, bearer(viewer), 60);
      expect([jobs.count(200), jobs.count(503)]).toEqual([20, 40]);
      before = closedSoFar();
      await jobs.close();
      await closedStreams(before, 20);
    } finally {
      open();
    }
    await h.deps.producer.waitFor('export', held, 10_000);
  });
});

describe('events.maxClientsPerCaller', () => {
  it('refuses a caller past its own bound with 429 and Retry-After, while others are still admitted', async () => {
    const { url } = await serve({ maxClients: 1000, maxClientsPerCaller: 3 });
    const u1 = await createToken(h.secret, { user: 'u1', role: 'user' });
    const u2 = await createToken(h.secret, { user: 'u2', role: 'user' });
    const mine = await burst(url, '/v1/events', bearer(u1), 10);
    expect([mine.count(200), mine.count(429)]).toEqual([3, 7]);
    const refused = mine.answers.find((r) => r.status === 429)!;
    expect(refused.headers.get('retry-after')).toBe('5');
    const { error } = await body(refused);
    expect(error.code).toBe('STOWAGE_ERR_BUSY');
    expect(error.message).toMatch(/user "u1" already has 3 open event streams.*events\.maxClientsPerCaller = 3/);
    // Job streams count against the same bound.
    const job = await fetch(`${url}/v1/jobs/export/export.none/events`, { headers: bearer(u1) });
    expect(job.status).toBe(429);

    const other = await sseClient(url, '/v1/events', bearer(u2));
    expect(other.res.status).toBe(200);
    // The same user name with another role is another caller.
    const asViewer = await sseClient(url, '/v1/events', bearer(await createToken(h.secret, { user: 'u1', role: 'viewer' })));
    expect(asViewer.res.status).toBe(200);

    const before = closedSoFar();
    await mine.close();
    await closedStreams(before, 3);
    const again = await sseClient(url, '/v1/events', bearer(u1));
    expect(again.res.status).toBe(200);
    await Promise.all([other.close(), asViewer.close(), again.close()]);
  });
});

describe('events.maxStreamSeconds', () => {
  it('ends /v1/events at its lifetime so that the reconnect gets what came in between, sent or not', async () => {
    const { url } = await serve({ maxStreamMs: 700 });
    // Sent nothing before the end: only the id on the last line says where to resume.
    const quiet = await sseClient(url, '/v1/events?type=backup_completed', bearer(viewer));
    const skipped = await stream.emit('export_completed', { module: 'm', userId: 'u', key: 'filtered', records: 1 });
    await quiet.finished();
    expect(quiet.events).toEqual([]);
    expect(quiet.lastEventId).toBe(skipped);
    const missed = await stream.emit('backup_completed', { set: 's', key: 'k1', size: 1, sha256: 'x', databases: 1 });

    const resumed = await sseClient(url, '/v1/events?type=backup_completed', { ...bearer(viewer), 'last-event-id': quiet.lastEventId! });
    await resumed.until(() => resumed.events.length >= 1, 'the event sent while it was away');
    const live = await stream.emit('backup_completed', { set: 's', key: 'k2', size: 1, sha256: 'x', databases: 1 });
    await resumed.finished();
    expect(resumed.events.map((e) => e.id)).toEqual([missed, live]);
    expect(resumed.lastEventId).toBe(live);
  });

  it("ends a job's stream at its lifetime; the reconnect resumes with its later events and outcome, none twice", async () => {
    const { url } = await serve({ maxStreamMs: 700 });
    const open = gate('life');
    const { jobId } = await h.deps.producer.enqueue('export', { module: 'm', userId: 'u1', format: 'json', records: [{ name: 'life' }] });
    const first = await sseClient(url, `/v1/jobs/export/${jobId}/events`, bearer(viewer));
    await first.until(() => first.events.some((e) => e.event === 'export_completed'), 'the first domain event');
    await first.finished();
    const a = first.events.find((e) => e.event === 'export_completed')!;
    expect((a.data as { data: { key: string } }).data.key).toBe('life/a');
    expect(first.events.map((e) => e.event)).not.toContain('completed');
    expect(first.lastEventId).not.toBe('done');

    // The rest happens while no client follows it.
    open();
    await h.deps.producer.waitFor('export', jobId, 10_000);
    const second = await sseClient(url, `/v1/jobs/export/${jobId}/events`, { ...bearer(viewer), 'last-event-id': first.lastEventId! });
    await second.finished();
    expect(second.events.map((e) => e.event)).toEqual(['export_completed', 'state', 'completed']);
    expect((second.events[0]!.data as { data: { key: string } }).data.key).toBe('life/b');
    expect(second.events[2]).toMatchObject({ id: 'done', data: { jobId, result: standInResult('life', { key: 'life/b' }) } });
  });
});
