/**
 * The "Low" findings of the security review (issue 17, item 7), each through the surface a user or
 * an attacker has: `stowage config` and `stowage worker` as processes, and the HTTP server (real
 * sockets where the finding is about them) against real Redis, Postgres and radosgw.
 */
import { spawn } from 'node:child_process';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { MAX_ERROR_CODES } from '../../src/failures/metrics.js';
import { buildServer, startServer } from '../../src/http/server.js';
import { jobId, MAX_JSON_DEPTH } from '../../src/ids.js';
import { RESERVED_TOP_LEVEL_PREFIXES } from '../../src/storage/keys.js';
import { serializeManifest, type ManifestEntry } from '../../src/storage/manifest.js';
import { exportRecords } from '../../src/workers/export.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { CLI_MAIN, runCli } from '../helpers/cli.js';
import { DATABASE_URL, REDIS_URL, isolate } from '../helpers/isolation.js';
import { closedPort, harness, harnessRuntime, type Harness } from '../http/harness.js';

const iso = isolate('lowfindings');
let h: Harness;
let app: ReturnType<typeof buildServer>;
let runtime: Runtime;
let admin: string;
let alice: string;

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

/** `{"a":{"a":…1…}}`, `depth` objects deep, written as text (no recursion to build or send it). */
const nested = (depth: number) => `${'{"a":'.repeat(depth - 1)}{"a":1}${'}'.repeat(depth - 1)}`;

async function until<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  h = await harness(iso, { s3: true });
  runtime = await harnessRuntime(h, ['export'], { processors: { export: exportRecords }, maintenance: false });
  app = buildServer(h.deps);
  await app.ready();
  admin = await createToken(h.secret, { user: 'ops', tenant: 'acme', role: 'admin' });
  alice = await createToken(h.secret, { user: 'alice', role: 'user' });
}, 60_000);

afterAll(async () => {
  await app?.close();
  await runtime?.close();
  await h?.close();
  await iso.cleanup();
});

describe('a) stowage config', () => {
  it('hides passwords given as query parameters of DATABASE_URL and REDIS_URL, in any case or escaping', async () => {
    const sets = [{ name: 'shop', postgres: [{ name: 'main', url: 'postgres://app@db.internal/shop?PassWord=pw-q-5' }] }];
    const run = await runCli(iso, ['config'], {
      DATABASE_URL: 'postgres://app:pw-userinfo-0@db.internal:5432/shop?sslmode=require&password=pw-q-1&sslpassword=pw-q-2',
      REDIS_URL: 'redis://cache.internal:6379/0?pass%77ord=pw-q-3&Token=pw-q-4',
      STOWAGE_BACKUP_SETS: JSON.stringify(sets),
    });
    expect(run.code, run.stderr).toBe(0);
    for (const secret of ['pw-userinfo-0', 'pw-q-1', 'pw-q-2', 'pw-q-3', 'pw-q-4', 'pw-q-5']) expect(run.stdout).not.toContain(secret);
    const printed = JSON.parse(run.stdout) as { databaseUrl: string; redisUrl: string; backupSets: typeof sets };
    // What is not secret stays readable.
    expect(printed.databaseUrl).toBe(
      'postgres://app:redacted@db.internal:5432/shop?sslmode=require&password=redacted&sslpassword=redacted',
    );
    expect(printed.redisUrl).toBe('redis://cache.internal:6379/0?password=redacted&Token=redacted');
    expect(printed.backupSets[0]!.postgres[0]!.url).toBe('postgres://app@db.internal/shop?PassWord=redacted');
  });
});

describe('b) request logs', () => {
  it('blank a token whose parameter name is percent-encoded (?%74oken=), though it authenticates like ?token=', async () => {
    const viewer = await createToken(h.secret, { user: 'victor', role: 'viewer' });
    const running = await startServer({
      ...h.deps,
      config: { ...h.deps.config, http: { ...h.deps.config.http, host: '127.0.0.1', port: 0 } },
    });
    try {
      // The board takes `?token=` once (a browser cannot send a bearer header on a page load).
      const path = '/admin/queues';
      const res = await fetch(`${running.url}${path}?%74oken=${viewer}&Access_Token=at-SECRET-2&page=2`, { redirect: 'manual' });
      // Not 401: the server read the encoded name as `token` and let the viewer in.
      expect(res.status, await res.text()).toBeLessThan(400);
      const line = await until('the request log line', () => h.logLines.find((l) => l.includes(`"url":"${path}?`)));
      expect(line).not.toContain(viewer);
      expect(line).not.toContain(viewer.split('.')[2]);
      expect(line).not.toContain('at-SECRET-2');
      expect(JSON.parse(line).url).toBe(`${path}?token=%5Bredacted%5D&Access_Token=%5Bredacted%5D&page=2`);
    } finally {
      await running.close();
    }
  });
});

describe("c) job ids that name BullMQ's own keys", () => {
  it('GET /v1/jobs/:kind/:id answers 404 for meta, events, id and the other key names, never a 500 or a made-up job', async () => {
    // A job in the queue, so its meta hash, event stream and id keys exist.
    const enqueued = await app.inject({
      method: 'POST',
      url: '/v1/jobs/export',
      headers: bearer(admin),
      payload: { module: 'lowc', userId: 'u1', format: 'json', records: [{ n: 1 }] },
    });
    expect(enqueued.statusCode).toBe(202);
    await h.deps.producer.waitFor('export', enqueued.json().jobId, 20_000);
    const ids = ['meta', 'events', 'id', 'wait', 'active', 'completed', 'failed', 'delayed', 'marker', 'stalled-check', 'de:x', 'repeat:x'];
    for (const id of ids) {
      const res = await app.inject({ method: 'GET', url: `/v1/jobs/export/${encodeURIComponent(id)}`, headers: bearer(admin) });
      expect(res.statusCode, `${id}: ${res.body}`).toBe(404);
      expect(res.json().error.message).toBe(`job ${id} not found in queue export`);
    }
    // A real job still reads.
    const real = await app.inject({ method: 'GET', url: `/v1/jobs/export/${enqueued.json().jobId}`, headers: bearer(admin) });
    expect(real.json()).toMatchObject({ state: 'completed' });
  });

  it("a job's event stream answers 404 for them, and the SDK refuses one as a chosen id", async () => {
    for (const id of ['meta', 'events', 'id']) {
      const res = await app.inject({ method: 'GET', url: `/v1/jobs/export/${id}/events`, headers: bearer(admin) });
      expect(res.statusCode, `${id}: ${res.body}`).toBe(404);
    }
    const payload = { module: 'lowc', userId: 'u1', format: 'json' as const, records: [{ n: 2 }] };
    for (const id of ['meta', 'events', 'limiter', 'de:x']) {
      const err = await h.deps.producer.enqueue('export', payload, { jobId: id }).catch((e: unknown) => e);
      expect(err, id).toMatchObject({ code: 'STOWAGE_ERR_INVALID_PAYLOAD' });
      expect((err as Error).message).toContain('jobId: ');
    }
    expect(await h.deps.producer.queue('export').getJobState('limiter')).toBe('unknown');
  });

  it('the job id schema refuses a chosen id that names a BullMQ key, naming the word', () => {
    for (const id of ['meta', 'events', 'id', 'limiter', 'metrics']) {
      const r = jobId.safeParse(id);
      expect(r.success, id).toBe(false);
      expect(r.error!.issues[0]!.message).toBe(`"${id}" is reserved: BullMQ keeps its own "${id}" key under every queue`);
    }
    expect(jobId.safeParse('de:x').success).toBe(false);
    expect(jobId.safeParse('invoice-2026-001').success).toBe(true);
  });
});

describe('d) deeply nested records', () => {
  it(`answer 400 naming the limit (${MAX_JSON_DEPTH} levels) at 5000 levels, and are stored at 10`, async () => {
    const post = (url: string, body: string) =>
      app.inject({ method: 'POST', url, headers: { ...bearer(alice), 'content-type': 'application/json' }, payload: body });
    const deep = await post('/api/v1/records/lowdeep', `{"format":"json","records":[${nested(5000)}]}`);
    expect(deep.statusCode, deep.body).toBe(400);
    expect(deep.json().error.message).toContain(`records.0: nests deeper than ${MAX_JSON_DEPTH} levels of objects and arrays (the limit)`);
    // The same payload through the generic job API.
    const viaJobs = await app.inject({
      method: 'POST',
      url: '/v1/jobs/export',
      headers: { ...bearer(admin), 'content-type': 'application/json' },
      payload: `{"module":"lowdeep","userId":"u1","format":"json","records":[${nested(5000)}]}`,
    });
    expect(viaJobs.statusCode, viaJobs.body).toBe(400);
    expect(viaJobs.json().error.message).toContain(`nests deeper than ${MAX_JSON_DEPTH + 2} levels`);

    const ok = await post('/api/v1/records/lowdeep', `{"format":"json","id":"d10","records":[${nested(10)}]}`);
    expect(ok.statusCode, ok.body).toBe(202);
    await h.deps.producer.waitFor('export', ok.json().jobId, 20_000);
    const got = await app.inject({ method: 'GET', url: '/api/v1/records/lowdeep/d10', headers: bearer(alice) });
    expect(got.json().records).toEqual([JSON.parse(nested(10))]);
    // At the limit exactly: accepted.
    const atLimit = await post('/api/v1/records/lowdeep', `{"format":"json","records":[${nested(MAX_JSON_DEPTH)}]}`);
    expect(atLimit.statusCode, atLimit.body).toBe(202);
  });
});

describe('e) record module names and the records root', () => {
  it("refuse Stowage's own top-level prefixes as module names, naming why", async () => {
    for (const module of ['backups', 'failure_patterns', 'manifests', 'json_blobs', 'records', '_stowage']) {
      expect(RESERVED_TOP_LEVEL_PREFIXES.has(module)).toBe(true);
      const res = await app.inject({
        method: 'POST',
        url: `/api/v1/records/${module}`,
        headers: bearer(alice),
        payload: { format: 'json', records: [{ n: 1 }] },
      });
      expect(res.statusCode, module).toBe(400);
      expect(res.json().error.message).toContain(`module: "${module}" is reserved: Stowage keeps its own ${module}/ objects`);
    }
    // Nor may a build artifact's owner, whose id is the artifact's top-level folder.
    const build = await app.inject({
      method: 'POST',
      url: '/v1/jobs/build-artifact',
      headers: bearer(admin),
      payload: { userId: 'backups', projectId: 'p1', versionId: 'v1', buildDir: process.cwd() },
    });
    expect(build.statusCode, build.body).toBe(400);
    expect(build.json().error.message).toContain('userId: "backups" is reserved');
    // Reading one is still allowed (records an earlier version stored there stay readable).
    const read = await app.inject({ method: 'GET', url: '/api/v1/records/backups', headers: bearer(alice) });
    expect(read.statusCode).toBe(200);
  });

  it("stores under records/{module}/{userId}/…, so a module named like another user never lands in that user's folder", async () => {
    // Build artifacts live at `{userId}/…`: a module named "bob" used to write `bob/alice/…`.
    const res = await app.inject({
      method: 'POST',
      url: '/api/v1/records/bob',
      headers: bearer(alice),
      payload: { format: 'jsonl', id: 'e1', records: [{ n: 1 }] },
    });
    expect(res.statusCode).toBe(202);
    await h.deps.producer.waitFor('export', res.json().jobId, 20_000);
    const got = await app.inject({ method: 'GET', url: '/api/v1/records/bob/e1', headers: bearer(alice) });
    expect(got.json().entry.key).toMatch(/^records\/bob\/alice\/\d{4}\/\d{2}\/\d{2}\/e1\.jsonl$/);
  });

  it('still reads records an earlier version wrote at {module}/{userId}/… (the manifest entry holds the key)', async () => {
    const storage = h.deps.storage();
    const key = 'oldnotes/alice/2025/01/02/old1.json';
    const body = JSON.stringify([{ title: 'from before' }]);
    await storage.client.send(new PutObjectCommand({ Bucket: storage.bucket, Key: key, Body: body }));
    const entry: ManifestEntry = {
      id: 'old1',
      key,
      format: 'json',
      record_count: 1,
      size: Buffer.byteLength(body),
      sha256: 'f'.repeat(64),
      created_at: '2025-01-02T10:00:00.000Z',
    };
    await storage.client.send(
      new PutObjectCommand({ Bucket: storage.bucket, Key: 'manifests/oldnotes/alice/manifest.jsonl', Body: serializeManifest([entry]) }),
    );
    const got = await app.inject({ method: 'GET', url: '/api/v1/records/oldnotes/old1', headers: bearer(alice) });
    expect(got.statusCode, got.body).toBe(200);
    expect(got.json()).toMatchObject({ entry: { key }, records: [{ title: 'from before' }] });
  });
});

describe('f) /metrics label values from tenants', () => {
  it('keep error_code to a bounded set whatever codes a tenant reports', async () => {
    const failures = Array.from({ length: 1000 }, (_, i) => ({ error_code: `MADE_UP_${i}_${iso.id}`, message: `boom ${i}` }));
    const res = await app.inject({ method: 'POST', url: '/api/v1/failures', headers: bearer(admin), payload: { failures } });
    expect(res.statusCode, res.body).toBe(202);
    const scrape = await app.inject({ method: 'GET', url: '/metrics' });
    const codes = new Set([...scrape.body.matchAll(/^failure_match_misses_total\{error_code="([^"]*)"\}/gm)].map((m) => m[1]!));
    expect(codes.size).toBeGreaterThan(1);
    expect(codes.size).toBeLessThanOrEqual(MAX_ERROR_CODES + 1);
    expect(codes.has('OTHER')).toBe(true);
  });
});

describe('g) stowage worker --metrics-port', () => {
  it('refuses a non-loopback HTTP_HOST without auth, in one line, before taking a job', async () => {
    const port = await closedPort();
    const run = await runCli(iso, ['worker', '--queues', 'export', '--metrics-port', String(port)], { HTTP_HOST: '0.0.0.0' }, 30_000);
    expect(run.code).toBe(78);
    expect(run.stderr.trim().split('\n')).toEqual([
      `stowage: refusing to serve worker metrics on 0.0.0.0:${port} without authentication configured: bind STOWAGE_HTTP_HOST to 127.0.0.1, ` +
        'or set STOWAGE_AUTH_SECRET or STOWAGE_BASIC_AUTH as the http role requires for a non-loopback host',
    ]);
  });

  it('serves /metrics on 0.0.0.0 once auth is configured, as the http role listens', async () => {
    const port = await closedPort();
    const child = spawn(process.execPath, [CLI_MAIN, 'worker', '--queues', 'export', '--metrics-port', String(port)], {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '/tmp',
        REDIS_URL,
        DATABASE_URL,
        STOWAGE_PREFIX: iso.prefix,
        STOWAGE_DB_SCHEMA: iso.schema,
        LOG_LEVEL: 'silent',
        HTTP_HOST: '0.0.0.0',
        STOWAGE_AUTH_SECRET: h.secret,
      },
      stdio: 'ignore',
    });
    try {
      const text = await until(
        'the worker metrics',
        async () => {
          const r = await fetch(`http://127.0.0.1:${port}/metrics`).catch(() => undefined);
          return r?.ok ? r.text() : undefined;
        },
        30_000,
      );
      expect(text).toContain('stowage_jobs_completed_total');
    } finally {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
  });
});
