/**
 * Source roots (issue 17, item 2): workers read, and restore into, only folders under
 * STOWAGE_SOURCE_ROOTS. A path outside is refused at enqueue (SDK and HTTP, by its text) and again
 * by the real worker after resolving links, which is what catches a job added straight to BullMQ
 * (as the board's "add job" does) and a link inside a root that points out of it; nothing is read
 * or uploaded. Ad hoc SQLite paths and HTTP restore targets are held the same way; a configured
 * set's paths are the operator's and are not. Real Redis, Postgres, radosgw, worker runtime.
 */
import { mkdir, mkdtemp, readdir, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { ConfigError, JobParkedError, ValidationError } from '../../src/errors.js';
import { buildServer } from '../../src/http/server.js';
import { createProducer } from '../../src/producers/index.js';
import { loadConfig } from '../../src/config.js';
import { isInsideRoots, sourceRootProblem } from '../../src/storage/source-roots.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { harness, harnessRuntime, type Harness } from '../http/harness.js';
import { isolate } from '../helpers/isolation.js';

const iso = isolate('srcroots');
let h: Harness;
let app: ReturnType<typeof buildServer>;
let runtime: Runtime;
let work: string;
/** The only source root of this file's config. */
let root: string;
/** A folder beside the root, with a secret in it: never to be read. */
let outside: string;
let outsideDb: string;
let admin: string;

const SECRET = 'top-secret-outside-the-roots';
const call = (method: 'POST', url: string, body: unknown) =>
  app.inject({ method, url, headers: { authorization: `Bearer ${admin}` }, payload: body as object });

/** Keys in this file's bucket under `prefix`. */
async function keys(prefix: string): Promise<string[]> {
  const storage = h.deps.storage();
  const listed = await storage.client.send(new ListObjectsV2Command({ Bucket: storage.bucket, Prefix: prefix }));
  return (listed.Contents ?? []).map((o) => o.Key!);
}

function sqlite(path: string): void {
  const d = new Database(path);
  d.exec("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('one');");
  d.close();
}

beforeAll(async () => {
  work = await realpath(await mkdtemp(join(tmpdir(), 'stowage-srcroots-')));
  root = join(work, 'root');
  outside = join(work, 'outside');
  await mkdir(join(root, 'site'), { recursive: true });
  await mkdir(outside);
  await writeFile(join(root, 'site', 'index.html'), '<h1>ok</h1>\n');
  await writeFile(join(outside, 'secret.txt'), `${SECRET}\n`);
  outsideDb = join(outside, 'app.db');
  sqlite(outsideDb);
  // Links inside the root that lead out of it: to the folder, and to the database.
  await symlink(outside, join(root, 'escape'));
  await symlink(outsideDb, join(root, 'app.db'));
  h = await harness(iso, {
    s3: true,
    config: { sourceRoots: [root], backupSets: [{ name: 'ops', sqlite: [{ name: 'main', path: outsideDb }] }] },
  });
  runtime = await harnessRuntime(h, ['build-artifact', 'backup'], { maintenance: false });
  app = buildServer(h.deps);
  admin = await createToken(h.secret, { user: 'ops', role: 'admin' });
});

afterAll(async () => {
  await app?.close();
  await runtime?.close(2000);
  await h?.close();
  if (work) await rm(work, { recursive: true, force: true });
  await iso.cleanup();
});

const rootsText = () => `(STOWAGE_SOURCE_ROOTS=${root}); add its folder to STOWAGE_SOURCE_ROOTS`;
const re = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('at enqueue', () => {
  it('the SDK refuses buildDir /etc (and packPath, and .. out of a root) naming the roots; nothing is queued', async () => {
    const base = { userId: 'mallory', projectId: 'p', versionId: 'v1' };
    const refused = async (payload: Parameters<typeof h.deps.producer.buildArtifact>[0]) => {
      const err = await h.deps.producer.buildArtifact(payload).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ValidationError);
      return (err as ValidationError).message;
    };
    expect(await refused({ ...base, buildDir: '/etc' })).toBe(
      `invalid build-artifact payload: buildDir: /etc is outside the source roots ${rootsText()}`,
    );
    expect(await refused({ ...base, buildDir: `${root}/../outside` })).toMatch(
      new RegExp(`buildDir: ${re(outside)} is outside the source roots`),
    );
    // A sibling whose name starts like the root is not inside it.
    expect(await refused({ ...base, buildDir: `${root}2` })).toMatch(/buildDir: .* is outside the source roots/);
    expect(await refused({ ...base, buildDir: join(root, 'site'), fromVersionId: 'v0', packPath: '/etc/passwd' })).toMatch(
      /packPath: \/etc\/passwd is outside the source roots/,
    );
    expect(await h.queue('build-artifact').getJobCountByTypes('waiting', 'delayed', 'active', 'completed', 'failed')).toBe(0);
  });

  it('POST /v1/jobs/build-artifact answers 400 with the same message', async () => {
    const res = await call('POST', '/v1/jobs/build-artifact', { userId: 'mallory', projectId: 'p', versionId: 'v1', buildDir: '/etc' });
    expect(res.statusCode, res.body).toBe(400);
    expect(res.json().error).toMatchObject({
      code: 'STOWAGE_ERR_INVALID_PAYLOAD',
      message: `invalid build-artifact payload: buildDir: /etc is outside the source roots ${rootsText()}`,
    });
  });

  it('an ad hoc SQLite path outside is refused by the SDK and by POST /api/backups/now', async () => {
    const payload = { name: 'adhoc', sqlite: [{ name: 'x', path: outsideDb }] };
    await expect(h.deps.producer.backup(payload)).rejects.toThrow(
      new RegExp(`sqlite\\.0\\.path: ${re(outsideDb)} is outside the source roots`),
    );
    const res = await call('POST', '/api/backups/now', payload);
    expect(res.statusCode, res.body).toBe(400);
    expect(res.json().error.message).toMatch(/sqlite\.0\.path: .* is outside the source roots \(STOWAGE_SOURCE_ROOTS=/);
  });
});

describe('in the worker', () => {
  it('a job added straight to BullMQ with buildDir outside is parked for good on its first attempt; nothing is uploaded', async () => {
    // What the board's "add job" does: no producer, no enqueue check.
    await h
      .queue('build-artifact')
      .add(
        'build-artifact',
        { userId: 'mallory', projectId: 'raw', versionId: 'v1', buildDir: outside },
        { jobId: 'raw-outside', attempts: 3 },
      );
    const err = await h.deps.producer.waitFor('build-artifact', 'raw-outside', 60_000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(JobParkedError);
    expect(err).toMatchObject({ reason: 'permanent', attemptsMade: 1, error: { name: 'PermanentError' } });
    expect((err as JobParkedError).error.message).toBe(`buildDir: ${outside} is outside the source roots ${rootsText()}`);
    expect(await keys('mallory/')).toEqual([]);
  });

  it('a link inside a root that leads out passes the enqueue check and is refused once resolved; a real folder uploads', async () => {
    for (const [versionId, buildDir] of [
      ['v-link', join(root, 'escape')],
      ['v-through', join(root, 'escape', 'secret.txt')],
    ] as const) {
      const { jobId, created } = await h.deps.producer.buildArtifact({ userId: 'mallory', projectId: 'link', versionId, buildDir });
      expect(created).toBe(true);
      const err = await h.deps.producer.waitFor('build-artifact', jobId, 60_000).catch((e: unknown) => e);
      expect(err, buildDir).toBeInstanceOf(JobParkedError);
      expect((err as JobParkedError).reason).toBe('permanent');
      expect((err as JobParkedError).error.message).toMatch(
        new RegExp(`^buildDir: ${re(buildDir)} resolves to ${re(outside)}.*, which is outside the source roots`),
      );
    }
    expect(await keys('mallory/')).toEqual([]);

    // The control: a folder inside the root is archived and stored.
    const { jobId } = await h.deps.producer.buildArtifact({
      userId: 'alice',
      projectId: 'site',
      versionId: 'v1',
      buildDir: join(root, 'site'),
    });
    const result = await h.deps.producer.waitFor('build-artifact', jobId, 60_000);
    expect(result.status).toBe('uploaded');
    expect(await keys('alice/')).toEqual(['alice/site/snapshots/v1.zip', 'alice/site/snapshots/v1.zip.sha256']);
  });

  it("an application's producer without roots skips the enqueue check; the worker still refuses", async () => {
    const sdk = createProducer({ redisUrl: h.deps.config.redisUrl, prefix: h.deps.config.prefix });
    try {
      const { jobId } = await sdk.buildArtifact({ userId: 'mallory', projectId: 'sdk', versionId: 'v1', buildDir: '/etc' });
      const err = await sdk.waitFor('build-artifact', jobId, 60_000).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(JobParkedError);
      expect((err as JobParkedError).error.message).toBe(`buildDir: /etc is outside the source roots ${rootsText()}`);
    } finally {
      await sdk.close();
    }
    expect(await keys('mallory/')).toEqual([]);
  });

  it('an ad hoc SQLite path through a link out of the root is refused; a configured set outside the roots is trusted', async () => {
    const { jobId } = await h.deps.producer.backup({ name: 'adhoc', sqlite: [{ name: 'x', path: join(root, 'app.db') }] });
    const err = await h.deps.producer.waitFor('backup', jobId, 60_000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(JobParkedError);
    expect((err as JobParkedError).error.message).toMatch(
      new RegExp(`^sqlite\\.0\\.path: ${re(join(root, 'app.db'))} resolves to ${re(outsideDb)}, which is outside the source roots`),
    );
    expect(await keys('backups/adhoc/')).toEqual([]);

    // The operator wrote set "ops" (a database beside the root) into the configuration.
    const ops = await h.deps.producer.backup({ set: 'ops', requestedAt: new Date().toISOString() });
    const done = await h.deps.producer.waitFor('backup', ops.jobId, 60_000);
    expect(done).toMatchObject({ status: 'completed', set: 'ops' });
  });
});

describe('restore targets over HTTP', () => {
  it('POST /api/backups/:name/restore refuses `to` outside the roots (400) or through a link (422); inside stages', async () => {
    const [newest] = (
      (await app.inject({ method: 'GET', url: '/api/backups?set=ops', headers: { authorization: `Bearer ${admin}` } })).json() as {
        backups: { name: string }[];
      }
    ).backups;
    expect(newest).toBeDefined();
    const restore = (to: string) => call('POST', `/api/backups/${newest!.name}/restore`, { to });

    const out = await restore(join(outside, 'restored'));
    expect(out.statusCode, out.body).toBe(400);
    expect(out.json().error).toMatchObject({
      code: 'STOWAGE_ERR_INVALID_PAYLOAD',
      message: `invalid restore request: to: ${join(outside, 'restored')} is outside the source roots ${rootsText()}`,
    });
    const linked = await restore(join(root, 'escape', 'restored'));
    expect(linked.statusCode, linked.body).toBe(422);
    expect(linked.json().error.message).toBe(
      `to: ${join(root, 'escape', 'restored')} resolves to ${join(outside, 'restored')}, which is outside the source roots ${rootsText()}`,
    );
    // Nothing was staged beside the secret.
    expect((await readdir(outside)).sort()).toEqual(['app.db', 'secret.txt']);

    const inside = await restore(join(root, 'restored'));
    expect(inside.statusCode, inside.body).toBe(200);
    expect(inside.json().stagingDir).toBe(join(root, 'restored', '.stowage-restore'));
    expect((await call('POST', '/api/backups/cancel-restore', { dir: join(root, 'restored') })).statusCode).toBe(200);
  });
});

describe('the setting', () => {
  it('STOWAGE_SOURCE_ROOTS takes absolute folders separated by ":"; a relative entry is a ConfigError naming it', () => {
    expect(loadConfig({ STOWAGE_SOURCE_ROOTS: '/srv/builds/:/var/lib/app' }).sourceRoots).toEqual(['/srv/builds', '/var/lib/app']);
    expect(loadConfig({ STOWAGE_SOURCE_ROOTS: '*' }).sourceRoots).toEqual(['*']);
    const problem = (value: string) => {
      try {
        loadConfig({ STOWAGE_SOURCE_ROOTS: value });
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        return (err as ConfigError).message;
      }
      throw new Error(`${value} was accepted`);
    };
    expect(problem('relative/path')).toMatch(/STOWAGE_SOURCE_ROOTS.*"relative\/path" is not an absolute folder/);
    expect(problem('/srv/builds:builds')).toMatch(/STOWAGE_SOURCE_ROOTS.*"builds" is not an absolute folder/);
    expect(problem('*:/srv')).toMatch(/STOWAGE_SOURCE_ROOTS: \* \(anywhere\) cannot be combined with folders/);
  });

  it('defaults to the working directory and the OS temp folder, resolved', async () => {
    const roots = loadConfig({}).sourceRoots;
    expect(roots).toEqual(expect.arrayContaining([process.cwd(), tmpdir(), await realpath(tmpdir()), await realpath(process.cwd())]));
    expect(isInsideRoots(join(tmpdir(), 'build'), roots)).toBe(true);
    expect(isInsideRoots('/etc', roots)).toBe(false);
  });

  it('the text check: equal to a root or under root + separator, .. resolved, * anywhere', () => {
    expect(sourceRootProblem('/srv/builds', ['/srv/builds'])).toBeNull();
    expect(sourceRootProblem('/srv/builds/a/b', ['/srv/builds'])).toBeNull();
    expect(sourceRootProblem('/srv/builds2', ['/srv/builds'])).toMatch(/^\/srv\/builds2 is outside the source roots/);
    expect(sourceRootProblem('/srv/builds/../etc', ['/srv/builds'])).toMatch(/^\/srv\/etc is outside/);
    expect(sourceRootProblem('/etc', ['/'])).toBeNull();
    expect(sourceRootProblem('/etc', ['*'])).toBeNull();
  });
});
