/**
 * The HTTP server against real Redis, Postgres and radosgw, through server.inject() (and real
 * sockets for listening). The Bull Board UI in a browser is in board.browser.test.ts.
 */
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { createDb } from '../../src/db/pool.js';
import { PermanentError, StowageError } from '../../src/errors.js';
import { BOARD_COOKIE, buildServer, errorResponse, isLoopback, startServer, type StowageServer } from '../../src/http/server.js';
import { QUEUE_NAMES, createRedis, type PayloadInput } from '../../src/queues/index.js';
import { createStorage } from '../../src/storage/client.js';
import { isolate } from '../helpers/isolation.js';
import { BASIC_PASSWORD, basicHeader, closedPort, harness, harnessRuntime, type Harness } from './harness.js';

const iso = isolate('http');
let h: Harness;
let app: StowageServer;
let admin: string;
let viewer: string;

const exportPayload = { module: 'reports', userId: 'u1', format: 'json', records: [{ id: 1 }] } satisfies PayloadInput<'export'>;
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

beforeAll(async () => {
  h = await harness(iso, { s3: true });
  app = buildServer(h.deps);
  await app.ready();
  admin = await createToken(h.secret, { user: 'alice', role: 'admin' });
  viewer = await createToken(h.secret, { user: 'victor', tenant: 'acme', role: 'viewer' });
});

afterAll(async () => {
  await app?.close();
  await h?.close();
  await iso.cleanup();
});

/**
 * The token with one signature character changed. Not the last one: base64url's last character
 * of a 32-byte HMAC carries 2 unused bits, so some changes there decode to the same signature
 * (an "xx" ending let about one run in a thousand through).
 */
function tampered(token: string): string {
  const at = token.length - 5;
  return `${token.slice(0, at)}${token[at] === 'A' ? 'B' : 'A'}${token.slice(at + 1)}`;
}
describe('probes', () => {
  it('GET /healthz answers without touching dependencies', async () => {
    const res = await app.inject({ method: 'GET', url: '/healthz' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ status: 'ok' });
  });

  it('GET /readyz checks Redis, Postgres and the bucket', async () => {
    const res = await app.inject({ method: 'GET', url: '/readyz' });
    expect(res.json()).toMatchObject({
      status: 'ok',
      checks: { redis: { status: 'ok' }, postgres: { status: 'ok' }, storage: { status: 'ok' } },
    });
    expect(res.statusCode).toBe(200);
  });

  it('GET /readyz is 503 naming Postgres when its port is closed; unconfigured storage is skipped', async () => {
    const db = createDb(
      { databaseUrl: `postgres://postgres@127.0.0.1:${await closedPort()}/postgres`, databaseSchema: iso.schema },
      { max: 1 },
    );
    const unconfigured = () => {
      throw new StowageError('STOWAGE_ERR_CONFIG', 'object storage is not configured: set R2_BUCKET');
    };
    const server = buildServer({ ...h.deps, db, storage: unconfigured });
    try {
      const res = await server.inject({ method: 'GET', url: '/readyz' });
      expect(res.statusCode).toBe(503);
      expect(res.json()).toMatchObject({
        status: 'fail',
        checks: {
          redis: { status: 'ok' },
          postgres: { status: 'fail', error: 'ECONNREFUSED' },
          storage: { status: 'skipped' },
        },
      });
    } finally {
      await server.close();
      await db.close();
    }
  });

  it('GET /readyz is 503 when the bucket does not exist', async () => {
    const storage = createStorage({ storage: { ...h.deps.config.storage, bucket: 'no-such-bucket' } });
    const server = buildServer({ ...h.deps, storage: () => storage });
    try {
      const res = await server.inject({ method: 'GET', url: '/readyz' });
      expect(res.statusCode).toBe(503);
      expect(res.json().checks.storage).toMatchObject({ status: 'fail', error: expect.stringContaining('404') });
    } finally {
      await server.close();
      storage.close();
    }
  });
});

describe('POST /v1/jobs/:kind', () => {
  it('enqueues with an admin token: 202, then created:false for the same work', async () => {
    const first = await app.inject({ method: 'POST', url: '/v1/jobs/export', headers: bearer(admin), payload: exportPayload });
    expect(first.statusCode).toBe(202);
    const body = first.json();
    expect(body).toMatchObject({ kind: 'export', created: true, jobId: expect.stringMatching(/^export\./) });
    expect(await h.queue('export').getJobState(body.jobId)).toBe('waiting');

    const again = await app.inject({ method: 'POST', url: '/v1/jobs/export', headers: bearer(admin), payload: exportPayload });
    expect(again.statusCode).toBe(202);
    expect(again.json()).toEqual({ kind: 'export', created: false, jobId: body.jobId });
    expect(await h.queue('export').getJobCountByTypes('waiting')).toBe(1);
  });

  it('refuses a bad payload with 400 naming each field, and enqueues nothing', async () => {
    const res = await app.inject({
      method: 'POST',
      url: '/v1/jobs/export',
      headers: bearer(admin),
      payload: { module: 'reports', format: 'xml', records: [] },
    });
    expect(res.statusCode).toBe(400);
    const { error } = res.json();
    expect(error.code).toBe('STOWAGE_ERR_INVALID_PAYLOAD');
    expect(error.issues).toEqual(
      expect.arrayContaining([expect.stringMatching(/^userId: /), expect.stringMatching(/^format: /), expect.stringMatching(/^records: /)]),
    );
    expect(await h.queue('export').getJobCountByTypes('waiting')).toBe(1);
  });

  it('401 without a token, with basic auth, and with an expired or forged token', async () => {
    const none = await app.inject({ method: 'POST', url: '/v1/jobs/export', payload: exportPayload });
    expect(none.statusCode).toBe(401);
    expect(none.headers['www-authenticate']).toMatch(/^Bearer/);
    expect(none.json().error).toMatchObject({ code: 'STOWAGE_ERR_UNAUTHORIZED', message: expect.stringContaining('missing bearer token') });

    const basic = await app.inject({
      method: 'POST',
      url: '/v1/jobs/export',
      headers: { authorization: basicHeader() },
      payload: exportPayload,
    });
    expect(basic.statusCode).toBe(401);
    expect(basic.json().error.message).toMatch(/bearer tokens only/);

    const { SignJWT } = await import('jose');
    const issued = Math.floor(Date.now() / 1000) - 3600;
    const expired = await new SignJWT({ tenant: 'alice', role: 'admin' })
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuer('stowage')
      .setSubject('alice')
      .setIssuedAt(issued)
      .setExpirationTime(issued + 60)
      .sign(new TextEncoder().encode(h.secret));
    const late = await app.inject({ method: 'POST', url: '/v1/jobs/export', headers: bearer(expired), payload: exportPayload });
    expect(late.statusCode).toBe(401);
    expect(late.json().error.message).toMatch(/^token expired at /);

    const forged = await createToken('x'.repeat(40), { user: 'alice', role: 'admin' });
    const bad = await app.inject({ method: 'POST', url: '/v1/jobs/export', headers: bearer(forged), payload: exportPayload });
    expect(bad.statusCode).toBe(401);
    expect(bad.json().error.message).toMatch(/signature is invalid/);
  });

  it('403 for a viewer token: viewers may read jobs but not enqueue', async () => {
    const res = await app.inject({
      method: 'POST',
      url: '/v1/jobs/export',
      headers: bearer(viewer),
      payload: { ...exportPayload, userId: 'u2' },
    });
    expect(res.statusCode).toBe(403);
    expect(res.json().error.code).toBe('STOWAGE_ERR_FORBIDDEN');
    expect(await h.queue('export').getJobCountByTypes('waiting')).toBe(1);
  });

  it('404 with a code for an unknown kind, and for the dead-letter queue', async () => {
    for (const kind of ['nope', 'dead-letter']) {
      const res = await app.inject({ method: 'POST', url: `/v1/jobs/${kind}`, headers: bearer(admin), payload: {} });
      expect(res.statusCode).toBe(404);
      expect(res.json().error).toMatchObject({ code: 'STOWAGE_ERR_UNKNOWN_KIND', message: expect.stringContaining(`"${kind}"`) });
    }
  });

  it('400 for malformed JSON, without a stack trace', async () => {
    const res = await app.inject({
      method: 'POST',
      url: '/v1/jobs/export',
      headers: { ...bearer(admin), 'content-type': 'application/json' },
      payload: '{"module": ',
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.code).toBe('STOWAGE_ERR_USAGE');
    expect(res.body).not.toMatch(/\n\s+at /);
  });
});

describe('GET /v1/jobs/:kind/:id', () => {
  it('reports state, progress, result and failedReason to any valid token', async () => {
    const { jobId } = await h.deps.producer.enqueue('export', { ...exportPayload, userId: 'u3' });
    await h
      .queue('export')
      .getJob(jobId)
      .then((job) => job!.updateProgress({ stage: 'upload', bytes: 10 }));
    const res = await app.inject({ method: 'GET', url: `/v1/jobs/export/${jobId}`, headers: bearer(viewer) });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({
      jobId,
      kind: 'export',
      state: 'waiting',
      progress: { stage: 'upload', bytes: 10 },
      result: null,
      failedReason: null,
      createdAt: expect.stringMatching(/^\d{4}-/),
    });

    const parked = await h.queue('dead-letter').add('parked', { originQueue: 'export' }, { jobId: 'export--x1' });
    const dlq = await app.inject({ method: 'GET', url: `/v1/jobs/dead-letter/${parked.id}`, headers: bearer(viewer) });
    expect(dlq.json()).toMatchObject({ jobId: 'export--x1', kind: 'dead-letter', state: 'waiting' });
  });

  it('a job parked after failing for good stays visible: state parked, why, and its dead-letter id; other users get 404', async () => {
    const runtime = await harnessRuntime(h, ['build-artifact'], {
      maintenance: false,
      processors: {
        // A kind no other test here enqueues, so only this job is run (and parked).
        'build-artifact': async () => {
          throw new PermanentError('buildDir /nope does not exist');
        },
      },
    });
    let jobId = '';
    try {
      ({ jobId } = await h.deps.producer.enqueue('build-artifact', {
        userId: 'u7',
        projectId: 'p7',
        versionId: 'v1',
        buildDir: join(tmpdir(), 'nope'),
      }));
      const owner = await createToken(h.secret, { user: 'u7', role: 'user' });
      const other = await createToken(h.secret, { user: 'u8', role: 'user' });
      const get = (token: string) => app.inject({ method: 'GET', url: `/v1/jobs/build-artifact/${jobId}`, headers: bearer(token) });
      const deadline = Date.now() + 15_000;
      let body = (await get(owner)).json();
      while (body.state !== 'parked' && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
        body = (await get(owner)).json();
      }
      // The origin queue no longer has it: parking moved it to the dead-letter queue.
      expect(await h.queue('build-artifact').getJob(jobId)).toBeUndefined();
      expect(body).toMatchObject({
        jobId,
        kind: 'build-artifact',
        state: 'parked',
        failedReason: 'buildDir /nope does not exist',
        attemptsMade: 1,
        createdAt: expect.stringMatching(/^\d{4}-/),
        parked: {
          reason: 'permanent',
          deadLetterId: `build-artifact--${jobId}`,
          error: { name: 'PermanentError', code: 'STOWAGE_ERR_PERMANENT', message: 'buildDir /nope does not exist' },
        },
      });
      expect((await get(viewer)).json()).toMatchObject({ state: 'parked' });
      const foreign = await get(other);
      expect(foreign.statusCode).toBe(404);
      expect(foreign.json().error.message).toBe(`job ${jobId} not found in queue build-artifact`);
    } finally {
      await runtime.close(2000);
      // The metrics tests below count the dead-letter queue.
      await (await h.queue('dead-letter').getJob(`build-artifact--${jobId}`))?.remove();
    }
  });

  it('404 for a missing job, 401 without a token', async () => {
    const missing = await app.inject({ method: 'GET', url: '/v1/jobs/export/export.nope', headers: bearer(viewer) });
    expect(missing.statusCode).toBe(404);
    expect(missing.json().error.code).toBe('STOWAGE_ERR_NOT_FOUND');
    const anonymous = await app.inject({ method: 'GET', url: '/v1/jobs/export/export.nope' });
    expect(anonymous.statusCode).toBe(401);
  });
});

describe('GET /metrics', () => {
  let text = '';

  it('exports per-queue depth and the age of the oldest waiting job', async () => {
    const queue = h.queue('aggregation');
    await h.deps.producer.enqueue('aggregation', { days: 1 });
    await new Promise((r) => setTimeout(r, 400));
    await h.deps.producer.enqueue('aggregation', { days: 2 });
    await h.deps.producer.enqueue('aggregation', { days: 3 }, { delay: 60_000 });
    expect(await queue.getJobCountByTypes('waiting')).toBe(2);

    const res = await app.inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    text = res.body;
    expect(text).toContain('stowage_queue_jobs{queue="aggregation",state="waiting"} 2\n');
    expect(text).toContain('stowage_queue_jobs{queue="aggregation",state="delayed"} 1\n');
    // The dead-letter queue holds the job parked by the previous describe block.
    expect(text).toContain('stowage_queue_jobs{queue="dead-letter",state="waiting"} 1\n');
    expect(text).toContain('stowage_queue_jobs{queue="backup",state="waiting"} 0\n');
    for (const name of QUEUE_NAMES) expect(text).toContain(`stowage_queue_metrics_up{queue="${name}"} 1\n`);
    // The oldest job, not the newest: it has waited at least the 400 ms between the two enqueues.
    const age = Number(/stowage_queue_oldest_waiting_age_seconds\{queue="aggregation"\} ([0-9.e+-]+)/.exec(text)?.[1]);
    expect(age).toBeGreaterThanOrEqual(0.4);
    expect(age).toBeLessThan(30);
    expect(text).toContain('stowage_queue_oldest_waiting_age_seconds{queue="cleanup"} 0\n');
    // The process registry comes along.
    expect(text).toContain('# TYPE stowage_jobs_completed_total counter');
  });

  it('passes promtool check metrics', (ctx) => {
    expect(text).not.toBe('');
    const promtool = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    if ((promtool.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') {
      ctx.skip('promtool is not installed (Debian: apt-get install -y prometheus); metrics text not linted');
    }
    expect(promtool.stdout + promtool.stderr).toBe('');
    expect(promtool.status).toBe(0);
  });

  it('stays bounded when Redis does not answer: queues reported down, probe fails in time', async () => {
    const dead = createRedis(`redis://127.0.0.1:${await closedPort()}`, { retryStrategy: () => 200 });
    dead.on('error', () => {});
    const queues = QUEUE_NAMES.map((name) => new Queue(name, { connection: dead, prefix: iso.prefix }));
    for (const q of queues) q.on('error', () => {});
    const server = buildServer({ ...h.deps, redis: dead, queues }, { readyTimeoutMs: 300, metricsTimeoutMs: 300 });
    try {
      const started = Date.now();
      const [metrics, ready] = await Promise.all([
        server.inject({ method: 'GET', url: '/metrics' }),
        server.inject({ method: 'GET', url: '/readyz' }),
      ]);
      expect(Date.now() - started).toBeLessThan(2000);
      expect(metrics.statusCode).toBe(200);
      expect(metrics.body).toContain('stowage_queue_metrics_up{queue="export"} 0\n');
      expect(metrics.body).not.toMatch(/^stowage_queue_jobs\{/m);
      expect(ready.statusCode).toBe(503);
      expect(ready.json().checks.redis).toEqual({ status: 'fail', ms: expect.any(Number), error: 'timed out after 300 ms' });
    } finally {
      await server.close();
      dead.disconnect();
      await Promise.all(queues.map((q) => Promise.race([q.close(), new Promise((r) => setTimeout(r, 500))])));
    }
  });
});

describe('Bull Board auth (inject)', () => {
  const board = '/admin/queues';

  it('401 with a Basic challenge when unauthenticated; 200 with basic auth', async () => {
    const none = await app.inject({ method: 'GET', url: board });
    expect(none.statusCode).toBe(401);
    expect(none.headers['www-authenticate']).toMatch(/^Basic realm="stowage"/);
    expect(none.json().error.message).toContain('?token=');

    const wrong = await app.inject({ method: 'GET', url: board, headers: { authorization: basicHeader('ops', 'wrong') } });
    expect(wrong.statusCode).toBe(401);

    const ok = await app.inject({ method: 'GET', url: board, headers: { authorization: basicHeader() } });
    expect(ok.statusCode).toBe(200);
    expect(ok.body).toContain('<base href="/admin/queues/"');
    expect(ok.headers['x-frame-options']).toBe('DENY');
  });

  it('lists every queue, dead-letter included; read-only for viewers, writable for admins', async () => {
    const asViewer = await app.inject({ method: 'GET', url: `${board}/api/queues`, headers: bearer(viewer) });
    expect(asViewer.statusCode).toBe(200);
    const viewerQueues = asViewer.json().queues as { name: string; readOnlyMode: boolean }[];
    expect(viewerQueues.map((q) => q.name).sort()).toEqual([...QUEUE_NAMES].sort());
    expect(viewerQueues.every((q) => q.readOnlyMode)).toBe(true);

    const asAdmin = await app.inject({ method: 'GET', url: `${board}/api/queues`, headers: bearer(admin) });
    expect((asAdmin.json().queues as { readOnlyMode: boolean }[]).every((q) => !q.readOnlyMode)).toBe(true);
  });

  it('swaps ?token= for an HttpOnly SameSite=Strict cookie and redirects without the token', async () => {
    const res = await app.inject({ method: 'GET', url: `${board}?token=${viewer}&x=1` });
    expect(res.statusCode).toBe(303);
    expect(res.headers.location).toBe(`${board}?x=1`);
    const cookie = String(res.headers['set-cookie']);
    expect(cookie).toMatch(new RegExp(`^${BOARD_COOKIE}=`));
    expect(cookie).toContain('HttpOnly');
    expect(cookie).toContain('SameSite=Strict');
    expect(cookie).toContain(`Path=${board}`);

    const withCookie = await app.inject({ method: 'GET', url: `${board}/api/queues`, headers: { cookie: cookie.split(';')[0]! } });
    expect(withCookie.statusCode).toBe(200);

    const badQuery = await app.inject({ method: 'GET', url: `${board}?token=${tampered(viewer)}` });
    expect(badQuery.statusCode).toBe(401);
    expect(badQuery.headers['set-cookie']).toBeUndefined();

    const badCookie = await app.inject({
      method: 'GET',
      url: `${board}/api/queues`,
      headers: { cookie: `${BOARD_COOKIE}=${tampered(admin)}` },
    });
    expect(badCookie.statusCode).toBe(401);
    expect(String(badCookie.headers['set-cookie'])).toContain('Max-Age=0');
  });

  it('board writes: cross-site refused, viewers refused, admins allowed', async () => {
    const pause = `${board}/api/queues/cleanup/pause`;
    const resume = `${board}/api/queues/cleanup/resume`;
    const here = { host: 'stowage.test:3000' };

    const crossOrigin = await app.inject({
      method: 'PUT',
      url: pause,
      headers: { ...bearer(admin), ...here, origin: 'https://evil.example' },
    });
    expect(crossOrigin.statusCode).toBe(403);
    const crossReferer = await app.inject({
      method: 'PUT',
      url: pause,
      headers: { authorization: basicHeader(), ...here, referer: 'https://evil.example/page' },
    });
    expect(crossReferer.statusCode).toBe(403);
    const crossSite = await app.inject({
      method: 'PUT',
      url: pause,
      headers: { ...bearer(admin), ...here, 'sec-fetch-site': 'same-site' },
    });
    expect(crossSite.statusCode).toBe(403);
    const asViewer = await app.inject({
      method: 'PUT',
      url: pause,
      headers: { ...bearer(viewer), ...here, origin: 'http://stowage.test:3000' },
    });
    expect(asViewer.statusCode).toBe(403);
    expect(asViewer.json().error.message).toMatch(/read-only/);
    expect(await h.queue('cleanup').isPaused()).toBe(false);

    const asAdmin = await app.inject({
      method: 'PUT',
      url: pause,
      headers: { ...bearer(admin), ...here, origin: 'http://stowage.test:3000' },
    });
    expect(asAdmin.statusCode).toBe(200);
    expect(await h.queue('cleanup').isPaused()).toBe(true);
    // Basic auth without Origin/Referer: a non-browser client.
    const byBasic = await app.inject({ method: 'PUT', url: resume, headers: { authorization: basicHeader(), ...here } });
    expect(byBasic.statusCode).toBe(200);
    expect(await h.queue('cleanup').isPaused()).toBe(false);
  });
});

describe('wiring', () => {
  it('shows extra queues (maintenance) on the board and in metrics, but not through /v1', async () => {
    const maintenance = new Queue('maintenance', { connection: h.deps.redis, prefix: iso.prefix });
    const server = buildServer({ ...h.deps, queues: [...h.deps.queues, maintenance] });
    try {
      const board = await server.inject({ method: 'GET', url: '/admin/queues/api/queues', headers: { authorization: basicHeader() } });
      expect((board.json().queues as { name: string }[]).map((q) => q.name)).toContain('maintenance');
      const metrics = await server.inject({ method: 'GET', url: '/metrics' });
      expect(metrics.body).toContain('stowage_queue_jobs{queue="maintenance",state="waiting"} 0\n');
      const read = await server.inject({ method: 'GET', url: '/v1/jobs/maintenance/x', headers: bearer(admin) });
      expect(read.json().error.code).toBe('STOWAGE_ERR_UNKNOWN_KIND');
    } finally {
      await server.close();
      await maintenance.close();
    }
  });

  it('refuses queues that are missing, repeated or under another prefix', async () => {
    const attempt = (queues: Queue[]) => {
      try {
        buildServer({ ...h.deps, queues });
      } catch (err) {
        return err as StowageError;
      }
      throw new Error('expected buildServer to refuse');
    };
    const missing = attempt(h.deps.queues.filter((q) => q.name !== 'dead-letter'));
    expect(missing.code).toBe('STOWAGE_ERR_CONFIG');
    expect(missing.message).toContain('missing queues: dead-letter');
    expect(attempt([...h.deps.queues, h.queue('export')]).message).toContain('repeated queues: export');
    const other = new Queue('backup', { connection: h.deps.redis, prefix: 'elsewhere' });
    expect(attempt([...h.deps.queues.filter((q) => q.name !== 'backup'), other]).message).toContain('not under prefix');
    await other.close();
  });
});

describe('errors', () => {
  it('hides an unexpected error behind a generic 500 with the request id', () => {
    const { status, body } = errorResponse(new Error('password=hunter2 at db.example'), 'req-7');
    expect(status).toBe(500);
    expect(body).toEqual({ error: { code: 'STOWAGE_ERR_INTERNAL', message: 'internal error (request req-7); see the server log' } });
  });

  it('maps codes through ERROR_CODES', () => {
    expect(errorResponse(new StowageError('STOWAGE_ERR_STORE', 'bucket said no'), 'r').status).toBe(502);
    expect(errorResponse(new StowageError('STOWAGE_ERR_USAGE', 'bad'), 'r').status).toBe(400);
  });

  it('404 with a code for an unknown route', async () => {
    const res = await app.inject({ method: 'GET', url: '/nope?token=abc' });
    expect(res.statusCode).toBe(404);
    expect(res.json()).toEqual({ error: { code: 'STOWAGE_ERR_NOT_FOUND', message: 'no route for GET /nope' } });
  });
});

describe('listening', () => {
  it('refuses 0.0.0.0 when no auth is configured', async () => {
    const open = { ...h.deps.config, authSecret: undefined, basicAuth: undefined, http: { host: '0.0.0.0', port: 0 } };
    const err = await startServer({ ...h.deps, config: open }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(StowageError);
    expect((err as StowageError).code).toBe('STOWAGE_ERR_CONFIG');
    expect((err as StowageError).message).toMatch(/^refusing to listen on 0\.0\.0\.0:0 without authentication/);
  });

  it('knows loopback from the rest', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]', '::ffff:127.0.0.1'])
      expect(isLoopback(host), host).toBe(true);
    for (const host of ['0.0.0.0', '::', '10.0.0.5', '192.168.1.1', 'example.com', '']) expect(isLoopback(host), host).toBe(false);
  });

  it('in dev mode (no auth) refuses a non-loopback Host: DNS rebinding', async () => {
    const open = { ...h.deps.config, authSecret: undefined, basicAuth: undefined };
    const server = buildServer({ ...h.deps, config: open });
    try {
      for (const url of ['/admin/queues/api/queues', '/v1/jobs/export/export.nope']) {
        const rebound = await server.inject({ method: 'GET', url, headers: { host: 'evil.example:3000' } });
        expect(rebound.statusCode, url).toBe(403);
        expect(rebound.json().error.message).toContain('only loopback host names');
      }
      const local = await server.inject({ method: 'GET', url: '/admin/queues/api/queues', headers: { host: '[::1]:3000' } });
      expect(local.statusCode).toBe(200);
    } finally {
      await server.close();
    }
  });

  it('serves an open board on loopback in dev mode (no auth configured)', async () => {
    const open = { ...h.deps.config, authSecret: undefined, basicAuth: undefined, http: { host: '127.0.0.1', port: 0 } };
    const running = await startServer({ ...h.deps, config: open });
    try {
      expect(running.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const res = await fetch(`${running.url}/admin/queues/api/queues`);
      expect(res.status).toBe(200);
      const enqueue = await fetch(`${running.url}/v1/jobs/cleanup`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ dryRun: true }),
      });
      expect(enqueue.status).toBe(202);
    } finally {
      await running.close();
    }
  });
});

describe('logs', () => {
  it('never carry tokens, passwords or the Authorization header', () => {
    const all = h.logLines.join('');
    expect(h.logLines.length).toBeGreaterThan(10);
    expect(all).toContain('token=%5Bredacted%5D');
    for (const secret of [admin, viewer, BASIC_PASSWORD, h.secret, basicHeader().slice(6)]) expect(all).not.toContain(secret);
    expect(all).not.toMatch(/Bearer ey/i);
  });
});
