/**
 * The build-artifact processor against real services: radosgw, Postgres (migrated into this file's
 * schema) and Redis (the domain-event stream). The ProcessorContext is built here by hand, as the
 * runtime would.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HeadObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config.js';
import { getLatestProjectVersionWithArtifact } from '../../src/db/project-versions.js';
import { getUploadReceipt } from '../../src/db/upload-receipts.js';
import { isPermanent } from '../../src/errors.js';
import type { BuildArtifactPayload, DomainEvent } from '../../src/queues/index.js';
import { artifactKey, packKey } from '../../src/storage/keys.js';
import { buildArtifact } from '../../src/workers/build-artifact.js';
import { processorTestEnv, type ProcessorTestEnv } from '../helpers/fleet.js';
import { isolate } from '../helpers/isolation.js';

const iso = isolate('buildartifact');
let env: ProcessorTestEnv<'build-artifact'>;
let work: string;
let buildDir: string;

/** Run the processor on a payload with a hand-built context (test/helpers/fleet.ts). */
function run(data: BuildArtifactPayload, artifact: Partial<Config['artifact']> = {}) {
  return env.run(data, env.configWith({ artifact }));
}

const getObject = (key: string) => env.getObject(key);
const objectExists = (key: string) => env.exists(key);
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function rowCount(userId: string, projectId: string): Promise<number> {
  const { rows } = await env.db.pool.query('SELECT count(*)::int AS n FROM project_versions WHERE user_id = $1 AND project_id = $2', [
    userId,
    projectId,
  ]);
  return rows[0].n as number;
}

beforeAll(async () => {
  env = await processorTestEnv(iso, 'build-artifact', buildArtifact);

  work = await mkdtemp(join(tmpdir(), 'stowage-build-'));
  buildDir = join(work, 'dist');
  await mkdir(join(buildDir, 'assets'), { recursive: true });
  await mkdir(join(buildDir, 'empty'));
  await writeFile(join(buildDir, 'index.html'), '<!doctype html><script src="app.js"></script>\n'.repeat(100));
  await writeFile(join(buildDir, 'app.js'), Array.from({ length: 20_000 }, (_, i) => `export const a${i} = ${i};\n`).join(''));
  await writeFile(join(buildDir, 'assets', 'logo.png'), randomBytes(50_000));
  await writeFile(join(buildDir, 'serve.sh'), '#!/bin/sh\n');
  await chmod(join(buildDir, 'serve.sh'), 0o755);
  await writeFile(join(work, 'outside.txt'), 'outside\n');
  await symlink(join(work, 'outside.txt'), join(buildDir, 'leak.txt'));
});

afterAll(async () => {
  await env?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('buildArtifact', () => {
  it("a multipart artifact's receipt carries the object's real ETag (radosgw's Complete answer has none)", async () => {
    const multipart = join(work, 'multipart');
    await mkdir(multipart);
    // Random bytes are stored, not deflated: 20 MB is three 8 MiB parts.
    await writeFile(join(multipart, 'blob.bin'), randomBytes(20_000_000));
    const { result } = await run({ userId: 'u9', projectId: 'p9', versionId: 'v1', buildDir: multipart });
    const key = artifactKey('u9', 'p9', 'v1');
    const head = await env.reader.send(new HeadObjectCommand({ Bucket: env.s3.bucket, Key: key }));
    expect(head.ETag).toMatch(/^"[0-9a-f]{32}-3"$/);
    const receipt = await getUploadReceipt(env.db, env.s3.bucket, key);
    expect(receipt?.etag).toBe(head.ETag);
    expect(result).toMatchObject({ status: 'uploaded', etag: head.ETag });
  });

  it('uploads the zip; the object, the receipt, the project_versions row and the event agree on size and SHA-256', async () => {
    const { result, progress, emitted, jobId } = await run({ userId: 'u1', projectId: 'p1', versionId: 'v1', buildDir, buildId: 'b1' });
    const key = artifactKey('u1', 'p1', 'v1');
    expect(result).toMatchObject({ status: 'uploaded', key, packKey: null });

    // A second client downloads the object and hashes it itself.
    const bytes = await getObject(key);
    expect(bytes.length).toBe(result.size);
    expect(sha256(bytes)).toBe(result.sha256);
    expect((await getObject(`${key}.sha256`)).toString()).toBe(`${result.sha256}  v1.zip\n`);

    const receipt = await getUploadReceipt(env.db, env.s3.bucket, key);
    expect(receipt).toMatchObject({ size: result.size, sha256: result.sha256, status: 'uploaded', queue: 'build-artifact', jobId });
    const row = await getLatestProjectVersionWithArtifact(env.db, 'u1', 'p1');
    expect(row).toMatchObject({
      versionId: 'v1',
      artifactUrl: `s3://${env.s3.bucket}/${key}`,
      artifactSize: result.size,
      artifactChecksum: result.sha256,
    });

    expect(emitted.map((e) => e.type)).toEqual(['artifact_uploaded']);
    expect(emitted[0]).toMatchObject({
      queue: 'build-artifact',
      jobId,
      data: {
        key,
        artifactUrl: `s3://${env.s3.bucket}/${key}`,
        size: result.size,
        sha256: result.sha256,
        filename: 'p1-v1.zip',
        downloadReady: true,
        userId: 'u1',
        projectId: 'p1',
        versionId: 'v1',
        buildId: 'b1',
      },
    });

    expect(progress.some((p) => p.stage === 'archiving')).toBe(true);
    expect(progress.at(-1)).toEqual({ stage: 'uploading', bytes: result.size, totalBytes: result.size });

    // The archive is valid and holds the folder, minus the link that leaves it.
    const zipFile = join(work, 'v1.zip');
    await writeFile(zipFile, bytes);
    expect(execFileSync('unzip', ['-t', zipFile], { encoding: 'utf8' })).toContain('No errors detected');
    const listing = execFileSync('unzip', ['-Z1', zipFile], { encoding: 'utf8' }).trim().split('\n');
    expect(listing).toEqual(['app.js', 'assets/', 'assets/logo.png', 'empty/', 'index.html', 'serve.sh']);
  });

  it('is idempotent: a rerun leaves one object, one row and one receipt with the same checksum', async () => {
    const first = await run({ userId: 'u2', projectId: 'p2', versionId: 'v1', buildDir });
    const second = await run({ userId: 'u2', projectId: 'p2', versionId: 'v1', buildDir });
    expect(second.result).toEqual(first.result);
    const listed = await env.reader.send(new ListObjectsV2Command({ Bucket: env.s3.bucket, Prefix: 'u2/' }));
    expect(listed.Contents?.map((o) => o.Key).sort()).toEqual(['u2/p2/snapshots/v1.zip', 'u2/p2/snapshots/v1.zip.sha256']);
    expect(await rowCount('u2', 'p2')).toBe(1);
    const { rows } = await env.db.pool.query('SELECT sha256 FROM upload_receipts WHERE key LIKE $1', ['u2/%']);
    expect(rows).toEqual([{ sha256: first.result.sha256 }]);
    expect(sha256(await getObject('u2/p2/snapshots/v1.zip'))).toBe(first.result.sha256);
  });

  it('warns over the warn size and still uploads', async () => {
    const { result, emitted } = await run(
      { userId: 'u3', projectId: 'p3', versionId: 'v1', buildDir },
      { warnBytes: 1000, limitBytes: 10_000_000 },
    );
    expect(result.status).toBe('uploaded');
    expect(emitted.map((e) => e.type)).toEqual(['artifact_size_warning', 'artifact_uploaded']);
    const warning = emitted[0] as DomainEvent<'artifact_size_warning'>;
    expect(warning.data).toMatchObject({ key: 'u3/p3/snapshots/v1.zip', limit: 10_000_000, warnAt: 1000, skipped: false });
    expect(warning.data.size).toBeGreaterThan(1000);
  });

  it('over the limit uploads nothing, completes as skipped_too_large, and never reads the files', async () => {
    const big = join(work, 'big');
    await mkdir(big);
    await writeFile(join(big, 'index.html'), 'x');
    // 64 GiB sparse file: no disk used; reading it would take minutes, so finishing fast proves it was not read.
    await writeFile(join(big, 'huge.bin'), '');
    await truncate(join(big, 'huge.bin'), 64 * 1024 ** 3);
    const { result, emitted, ms } = await run({ userId: 'u4', projectId: 'p4', versionId: 'v1', buildDir: big });
    expect(result).toEqual({
      status: 'skipped_too_large',
      key: 'u4/p4/snapshots/v1.zip',
      size: 64 * 1024 ** 3 + 1,
      sha256: null,
      etag: null,
      packKey: null,
    });
    expect(ms).toBeLessThan(5000);
    expect(emitted.map((e) => e.type)).toEqual(['artifact_size_warning']);
    expect(emitted[0]!.data).toMatchObject({
      size: 64 * 1024 ** 3 + 1,
      limit: 1024 ** 3,
      warnAt: 100 * 1024 ** 2,
      skipped: true,
      suggestion: expect.stringContaining('node_modules'),
      userId: 'u4',
    });
    expect(await objectExists('u4/p4/snapshots/v1.zip')).toBe(false);
    expect(await rowCount('u4', 'p4')).toBe(0);
  });

  it('stores a diff pack next to the snapshot when fromVersionId and packPath are given', async () => {
    const packDir = join(work, 'pack');
    await mkdir(packDir);
    await writeFile(join(packDir, 'objects.pack'), randomBytes(10_000));
    const { result } = await run({
      userId: 'u5',
      projectId: 'p5',
      versionId: 'v2',
      fromVersionId: 'v1',
      packPath: join(packDir, 'objects.pack'),
      buildDir,
    });
    const key = packKey('u5', 'p5', 'v1', 'v2');
    expect(result.packKey).toBe(key);
    const pack = await getObject(key);
    const receipt = await getUploadReceipt(env.db, env.s3.bucket, key);
    expect(receipt).toMatchObject({ size: pack.length, sha256: sha256(pack) });
    const zipFile = join(work, 'pack.zip');
    await writeFile(zipFile, pack);
    expect(execFileSync('unzip', ['-Z1', zipFile], { encoding: 'utf8' }).trim()).toBe('objects.pack');

    // A pack that already is a zip is stored as it is.
    const { result: again } = await run({
      userId: 'u5',
      projectId: 'p5',
      versionId: 'v3',
      fromVersionId: 'v2',
      packPath: zipFile,
      buildDir,
    });
    expect(sha256(await getObject(again.packKey!))).toBe(sha256(pack));
  });

  it('refuses a missing or unusable buildDir or packPath with a permanent error naming it', async () => {
    const missing = join(work, 'no-such-dir');
    const fifo = join(work, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const cases: [BuildArtifactPayload, RegExp][] = [
      [{ userId: 'u6', projectId: 'p6', versionId: 'v1', buildDir: missing }, /^buildDir: .*no-such-dir does not exist/],
      [{ userId: 'u6', projectId: 'p6', versionId: 'v1', buildDir: fifo }, /^buildDir: .*fifo is neither a directory nor a regular file/],
      [{ userId: 'u6', projectId: 'p6', versionId: 'v1', buildDir, fromVersionId: 'v0', packPath: missing }, /^packPath: .*does not exist/],
      [{ userId: 'u6', projectId: 'p6', versionId: 'v1', buildDir, packPath: join(buildDir, 'app.js') }, /^packPath: needs fromVersionId/],
    ];
    for (const [payload, message] of cases) {
      const err = await run(payload).then(
        () => null,
        (e: unknown) => e,
      );
      expect(isPermanent(err), String(err)).toBe(true);
      expect((err as Error).message).toMatch(message);
    }
    expect(await objectExists('u6/p6/snapshots/v1.zip')).toBe(false);
  });
});
