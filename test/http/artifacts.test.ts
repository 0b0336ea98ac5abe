/**
 * Artifact download API against real radosgw, Postgres and a build that really ran: the latest
 * export and a version's download give presigned attachment URLs whose bytes match the receipt;
 * another user's project is 404; no artifact is 404 with canRebuild; links expire.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { buildServer } from '../../src/http/server.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { isolate } from '../helpers/isolation.js';
import { harness, harnessRuntime, type Harness } from './harness.js';

const iso = isolate('artifacts');
let h: Harness;
let app: ReturnType<typeof buildServer>;
let runtime: Runtime;
let dir: string;
let alice: string;
let bob: string;
let built: { sha256: string; size: number };

const get = (url: string, token?: string) => app.inject({ method: 'GET', url, headers: token ? { authorization: `Bearer ${token}` } : {} });

beforeAll(async () => {
  h = await harness(iso, { s3: true });
  runtime = await harnessRuntime(h, ['build-artifact']);
  app = buildServer(h.deps);
  alice = await createToken(h.secret, { user: 'alice', role: 'user' });
  bob = await createToken(h.secret, { user: 'bob', role: 'user' });
  dir = await mkdtemp(join(tmpdir(), 'stowage-artifacts-'));
  await writeFile(join(dir, 'index.html'), '<h1>hello</h1>\n'.repeat(100));
  const { jobId } = await h.deps.producer.buildArtifact({ userId: 'alice', projectId: 'site', versionId: 'v1', buildDir: dir });
  built = (await h.deps.producer.waitFor('build-artifact', jobId, 30_000)) as { sha256: string; size: number };
  // A version the application knows about but whose artifact was never stored.
  await h.deps.db.pool.query(
    `INSERT INTO project_versions (user_id, project_id, version_id, created_at) VALUES ('alice', 'site', 'v0', now() - interval '1 day')`,
  );
});

afterAll(async () => {
  await app?.close();
  await runtime?.close(2000);
  await h?.close();
  await rm(dir, { recursive: true, force: true });
  await iso.cleanup();
});

describe('artifact downloads', () => {
  it('exports the latest version as a presigned attachment whose bytes match the receipt', async () => {
    const res = await get('/v1/projects/site/export', alice);
    expect(res.statusCode).toBe(200);
    expect(res.headers['cache-control']).toBe('no-store');
    const body = res.json() as { downloadUrl: string; expiresAt: string; filename: string; size: number };
    expect(body.filename).toBe('site-latest.zip');
    expect(body.size).toBe(built.size);
    const ttl = Date.parse(body.expiresAt) - Date.now();
    expect(ttl).toBeGreaterThan(24 * 3600_000 - 60_000);
    expect(ttl).toBeLessThanOrEqual(24 * 3600_000);
    const download = await fetch(body.downloadUrl);
    expect(download.status).toBe(200);
    expect(download.headers.get('content-disposition')).toContain('attachment; filename="site-latest.zip"');
    const bytes = Buffer.from(await download.arrayBuffer());
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(built.sha256);
  });

  it('downloads a specific version with its metadata', async () => {
    const res = await get('/v1/versions/v1/download', alice);
    expect(res.statusCode).toBe(200);
    const body = res.json() as { filename: string; size: number; version: { id: string; createdAt: string } };
    expect(body.filename).toBe('site-v1.zip');
    expect(body.version.id).toBe('v1');
    expect(Number.isNaN(Date.parse(body.version.createdAt))).toBe(false);
  });

  it("answers 404, never 403, for another user's project or version", async () => {
    for (const url of ['/v1/projects/site/export', '/v1/versions/v1/download']) {
      const res = await get(url, bob);
      expect(res.statusCode).toBe(404);
      expect(res.json().error.code).toBe('STOWAGE_ERR_NOT_FOUND');
    }
  });

  it('answers 404 with canRebuild when there is no artifact', async () => {
    const version = await get('/v1/versions/v0/download', alice);
    expect(version.statusCode).toBe(404);
    expect(version.json()).toMatchObject({ canRebuild: true, error: { code: 'STOWAGE_ERR_NOT_FOUND' } });
    const project = await get('/v1/projects/empty-project/export', alice);
    expect(project.statusCode).toBe(404);
    expect(project.json().canRebuild).toBe(true);
  });

  it('refuses bad ids, lifetimes over 7 days, and requests without a token', async () => {
    expect((await get('/v1/projects/site/export?expiresIn=700000', alice)).statusCode).toBe(400);
    expect((await get('/v1/versions/..%2Fx/download', alice)).statusCode).toBe(400);
    expect((await get('/v1/projects/site/export')).statusCode).toBe(401);
  });

  it('a link stops working after it expires', async () => {
    const res = await get('/v1/versions/v1/download?expiresIn=1', alice);
    const { downloadUrl } = res.json() as { downloadUrl: string };
    expect((await fetch(downloadUrl)).status).toBe(200);
    await new Promise((r) => setTimeout(r, 2500));
    expect((await fetch(downloadUrl)).status).toBe(403);
  });
});
