/**
 * /api/backups against real services (workers running the backup processor, radosgw, Postgres):
 * admin only (401 without a token, 403 for other roles), take two ad hoc-requested backups of one
 * set (never deduped), list, download (bytes match the recorded SHA-256), stage and cancel a
 * restore, test-connection, delete. No password in a payload (issue 17, item 4): an ad hoc postgres
 * URL with one is refused at enqueue, by the worker when an older producer wrote it, and the board
 * shows such a payload redacted.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { Job } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { getBackupByKey } from '../../src/db/backups.js';
import { buildServer } from '../../src/http/server.js';
import { STAGING_DIR_NAME } from '../../src/backups/restore.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { isolate } from '../helpers/isolation.js';
import { closedPort, harness, harnessRuntime, type Harness } from './harness.js';

const iso = isolate('httpbackups');
let h: Harness;
let app: ReturnType<typeof buildServer>;
let runtime: Runtime;
let work: string;
let admin: string;
let viewer: string;
let user: string;

const call = (method: 'GET' | 'POST' | 'DELETE', url: string, token?: string, body?: unknown) =>
  app.inject({
    method,
    url,
    headers: token ? { authorization: `Bearer ${token}` } : {},
    ...(body !== undefined ? { payload: body as object } : {}),
  });

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'stowage-httpbackups-'));
  const path = join(work, 'app.db');
  const d = new Database(path);
  d.exec("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('one'), ('two');");
  d.close();
  h = await harness(iso, { s3: true, config: { backupSets: [{ name: 'web', sqlite: [{ name: 'app', path }] }] } });
  runtime = await harnessRuntime(h, ['backup']);
  app = buildServer(h.deps);
  admin = await createToken(h.secret, { user: 'ops', role: 'admin' });
  viewer = await createToken(h.secret, { user: 'vic', role: 'viewer' });
  user = await createToken(h.secret, { user: 'ursula', role: 'user' });
});

afterAll(async () => {
  await app?.close();
  await runtime?.close(2000);
  await h?.close();
  if (work) await rm(work, { recursive: true, force: true });
  await iso.cleanup();
});

describe('/api/backups', () => {
  it('answers 401 without a token and 403 to a non-admin, on every route', async () => {
    const routes: ['GET' | 'POST' | 'DELETE', string][] = [
      ['GET', '/api/backups'],
      ['POST', '/api/backups/now'],
      ['GET', '/api/backups/web-backup-2026-01-01-000000/download'],
      ['DELETE', '/api/backups/web-backup-2026-01-01-000000'],
      ['POST', '/api/backups/test-connection'],
      ['POST', '/api/backups/web-backup-2026-01-01-000000/restore'],
      ['POST', '/api/backups/cancel-restore'],
    ];
    for (const [method, url] of routes) {
      const none = await call(method, url, undefined, method === 'POST' ? {} : undefined);
      expect(none.statusCode, `${method} ${url} without a token`).toBe(401);
      for (const token of [viewer, user]) {
        const res = await call(method, url, token, method === 'POST' ? {} : undefined);
        expect(res.statusCode, `${method} ${url} as non-admin`).toBe(403);
        expect(res.json().error.code).toBe('STOWAGE_ERR_FORBIDDEN');
      }
    }
  });

  it('takes backups on request (two of one set are two jobs), lists and downloads them', async () => {
    const first = await call('POST', '/api/backups/now', admin, { set: 'web' });
    expect(first.statusCode).toBe(202);
    const one = first.json() as { jobId: string; created: boolean };
    await h.deps.producer.waitFor('backup', one.jobId, 30_000);
    await new Promise((r) => setTimeout(r, 1100)); // a new second: a new archive name
    const second = await call('POST', '/api/backups/now', admin, { set: 'web' });
    const two = second.json() as { jobId: string; created: boolean };
    expect(two.jobId).not.toBe(one.jobId);
    expect(two.created).toBe(true);
    await h.deps.producer.waitFor('backup', two.jobId, 30_000);

    const bad = await call('POST', '/api/backups/now', admin, { set: 'web', name: 'x' });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error.message).toMatch(/set: give either set or name/);

    const list = await call('GET', '/api/backups?set=web', admin);
    expect(list.statusCode).toBe(200);
    const backups = (
      list.json() as { backups: { name: string; set: string; size: number; sha256: string; key: string; ageSeconds: number }[] }
    ).backups;
    expect(backups).toHaveLength(2);
    expect(backups[0]!.name).toMatch(/^web-backup-\d{4}-\d{2}-\d{2}-\d{6}$/);
    expect(backups[0]!.name > backups[1]!.name).toBe(true); // newest first
    expect(backups[0]).toMatchObject({ set: 'web', key: `backups/web/${backups[0]!.name}.tar.gz` });
    expect(backups[0]!.ageSeconds).toBeLessThan(60);

    const dl = await call('GET', `/api/backups/${backups[0]!.name}/download`, admin);
    expect(dl.statusCode).toBe(200);
    expect(dl.headers['content-type']).toBe('application/gzip');
    expect(dl.headers['content-disposition']).toBe(`attachment; filename="${backups[0]!.name}.tar.gz"`);
    expect(dl.rawPayload.length).toBe(backups[0]!.size);
    expect(createHash('sha256').update(dl.rawPayload).digest('hex')).toBe(backups[0]!.sha256);
    expect(dl.headers['x-checksum-sha256']).toBe(backups[0]!.sha256);

    const missing = await call('GET', '/api/backups/web-backup-2020-01-01-000000/download', admin);
    expect(missing.statusCode).toBe(404);
    const notAName = await call('GET', '/api/backups/..%2Fetc/download', admin);
    expect(notAName.statusCode).toBe(400);
    expect(notAName.json().error.message).toMatch(/not a backup name/);
  });

  it('stages a restore and cancels it; probes the store; deletes a backup', async () => {
    const [newest, older] = ((await call('GET', '/api/backups', admin)).json() as { backups: { name: string; key: string }[] }).backups;
    const to = join(work, 'restored');
    const staged = await call('POST', `/api/backups/${newest!.name}/restore`, admin, { to });
    expect(staged.statusCode).toBe(200);
    const body = staged.json() as { stagingDir: string; pending: { databases: { name: string; target: string }[] } };
    expect(body.stagingDir).toBe(join(to, STAGING_DIR_NAME));
    expect(body.pending.databases).toEqual([expect.objectContaining({ name: 'app', target: join(to, 'app.db') })]);
    expect((await readdir(body.stagingDir)).sort()).toEqual(['.pending-restore', 'app.db']);

    const relative = await call('POST', `/api/backups/${newest!.name}/restore`, admin, { to: 'relative/dir' });
    expect(relative.statusCode).toBe(400);

    const cancelled = await call('POST', '/api/backups/cancel-restore', admin, { dir: to });
    expect(cancelled.statusCode).toBe(200);
    expect(cancelled.json()).toEqual({ cancelled: newest!.name, stagingDir: body.stagingDir });
    expect(await readdir(to)).toEqual([]);
    expect((await call('POST', '/api/backups/cancel-restore', admin, { dir: to })).statusCode).toBe(404);

    const probe = await call('POST', '/api/backups/test-connection', admin);
    expect(probe.statusCode).toBe(200);
    expect((probe.json() as { ok: boolean; steps: { step: string; ok: boolean }[] }).steps.map((s) => [s.step, s.ok])).toEqual([
      ['put', true],
      ['head', true],
      ['get', true],
      ['list', true],
      ['delete', true],
    ]);

    const del = await call('DELETE', `/api/backups/${older!.name}`, admin);
    expect(del.statusCode).toBe(200);
    expect(del.json()).toEqual({ deleted: older!.name });
    const row = await getBackupByKey(h.deps.db, h.deps.config.storage.bucket!, older!.key);
    expect(row).toMatchObject({ status: 'deleted', deletedReason: 'deleted over HTTP by ops' });
    expect((await call('GET', `/api/backups/${older!.name}/download`, admin)).statusCode).toBe(404);
    expect(((await call('GET', '/api/backups', admin)).json() as { backups: unknown[] }).backups).toHaveLength(1);
  });
});

describe('passwords in backup payloads', () => {
  it('refuses an ad hoc postgres URL with a password: 400 naming the field and the fix, nothing enqueued', async () => {
    const secret = 'Sup3rSecretPw';
    for (const url of [`postgres://u:${secret}@127.0.0.1:5432/shop`, `postgres://u@127.0.0.1:5432/shop?password=${secret}`]) {
      const res = await call('POST', '/api/backups/now', admin, { name: 'leaky', postgres: [{ name: 'shop', url }] });
      expect(res.statusCode).toBe(400);
      const { code, message } = res.json().error as { code: string; message: string };
      expect(code).toBe('STOWAGE_ERR_INVALID_PAYLOAD');
      expect(message).toMatch(/postgres\.0\.url: carries a password/);
      expect(message).toMatch(/PGPASSWORD .*configured set \(backupSets\)/);
      expect(res.body).not.toContain(secret);
    }
    const jobs = await h.queue('backup').getJobs(['waiting', 'delayed', 'active', 'completed', 'failed', 'prioritized']);
    expect(jobs.filter((j) => (j.data as { name?: string }).name === 'leaky')).toEqual([]);
    expect(h.logLines.join('\n')).not.toContain(secret);
  });

  it("the worker refuses an older producer's payload with a password; the board shows such payloads redacted to a viewer", async () => {
    const secret = 'Legacy0ldPw';
    const port = await closedPort();
    const legacy = { name: 'legacy', postgres: [{ name: 'shop', url: `postgres://u:${secret}@127.0.0.1:${port}/shop` }] };
    const backups = h.queue('backup');
    // Written straight to Redis, as an older producer did: nothing validated it on the way in.
    await backups.add('backup', legacy, { jobId: 'legacy-now' });
    await backups.add('backup', legacy, { jobId: 'legacy-later', delay: 3_600_000 });

    let parked: Job | undefined;
    await vi.waitFor(
      async () => {
        parked = (await h.queue('dead-letter').getJobs(['waiting'])).find((j) => j.data.originJobId === 'legacy-now');
        if (!parked) throw new Error('not parked yet');
      },
      { timeout: 60_000, interval: 200 },
    );
    // Refused before pg_dump ran (permanent, first attempt), by field, without echoing the URL.
    expect(parked!.data).toMatchObject({ reason: 'permanent', attemptsMade: 1, error: { name: 'ValidationError' } });
    expect(parked!.data.error.message).toMatch(/postgres\.0\.url: carries a password/);
    expect(parked!.data.error.message).not.toContain(secret);

    const board = (url: string) => app.inject({ method: 'GET', url, headers: { authorization: `Bearer ${viewer}` } });
    const redactedUrl = `postgres://u:[redacted]@127.0.0.1:${port}/shop`;
    const list = await board('/admin/queues/api/queues?activeQueue=backup&status=delayed&page=1&jobsPerPage=50');
    expect(list.statusCode).toBe(200);
    expect(list.body).not.toContain(secret);
    const listed = (list.json().queues as { name: string; jobs: { id: string; data: typeof legacy }[] }[]).find(
      (q) => q.name === 'backup',
    )!;
    expect(listed.jobs.find((j) => j.id === 'legacy-later')?.data.postgres[0]?.url).toBe(redactedUrl);

    const one = await board('/admin/queues/api/queues/backup/legacy-later');
    expect(one.statusCode).toBe(200);
    expect(one.body).not.toContain(secret);
    expect((one.json().job as { data: typeof legacy }).data.postgres[0]!.url).toBe(redactedUrl);

    const dead = await board('/admin/queues/api/queues?activeQueue=dead-letter&status=waiting&page=1&jobsPerPage=50');
    expect(dead.statusCode).toBe(200);
    expect(dead.body).not.toContain(secret);
    const deadJobs = (dead.json().queues as { name: string; jobs: { data: { originJobId: string; payload: typeof legacy } }[] }[]).find(
      (q) => q.name === 'dead-letter',
    )!.jobs;
    expect(deadJobs.find((j) => j.data.originJobId === 'legacy-now')?.data.payload.postgres[0]?.url).toBe(redactedUrl);
  });
});
