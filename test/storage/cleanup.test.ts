/**
 * Cleanup against real services: s3rver (behind test/helpers/s3-proxy.ts and the ListMultipartUploads
 * extension below) and Postgres (this file's schema). 5,000 objects across prefixes, the old ones
 * with a Last-Modified 40 days back.
 *
 * Checks that rely on TEST-ONLY extensions (s3rver 3.7 answers 501/405 to these):
 * - AbortMultipartUpload: test/helpers/s3-proxy.ts (`abortMultipartUpload: true`);
 * - ListMultipartUploads: `startListUploadsExtension` below.
 * Those are the multipart checks ("an abandoned multipart upload is aborted") and the abort part
 * of the lifecycle enforcement. Every other check goes to s3rver unaided.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, stat, utimes, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import {
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupCommand, type Output } from '../../src/cli/commands/storage-ops.js';
import type { Config } from '../../src/config.js';
import { listCleanupLogs } from '../../src/db/cleanup-logs.js';
import { migrate } from '../../src/db/migrate.js';
import { createDb, type Db } from '../../src/db/pool.js';
import { createStorage, type Storage } from '../../src/storage/client.js';
import { DELETE_BATCH } from '../../src/storage/cleanup.js';
import { packKey, sha256SidecarKey } from '../../src/storage/keys.js';
import { runRecordedCleanup } from '../../src/workers/cleanup.js';
import { isolate } from '../helpers/isolation.js';
import { s3rverUploadsDir, startS3Proxy, type S3Proxy } from '../helpers/s3-proxy.js';
import { startS3, type TestS3 } from '../helpers/s3.js';

const DAY = 86_400_000;
const iso = isolate('cleanup');
let s3: TestS3;
let proxy: S3Proxy;
let ext: { endpoint: string; close(): Promise<void> };
let db: Db;
let client: S3Client;
/** Through the test-only extensions (multipart checks). */
let storage: Storage;
/** Straight to s3rver. */
let direct: Storage;

/**
 * TEST-ONLY: ListMultipartUploads (`GET /{bucket}?uploads`) per the S3 API reference, read from
 * s3rver's folder of open uploads (`<bucket>/._S3rver_uploads/<uploadId>/key`; the key file's mtime
 * is the upload's Initiated time). Prefix, key-marker/upload-id-marker and max-uploads are honoured;
 * uploads come in key order, then upload id. Everything else is forwarded to `upstream`.
 */
async function startListUploadsExtension(upstream: string): Promise<{ endpoint: string; close(): Promise<void> }> {
  const target = new URL(upstream);
  const xml = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://ext');
    const bucket = decodeURIComponent(url.pathname.slice(1).replace(/\/$/, ''));
    if (req.method === 'GET' && url.searchParams.has('uploads') && bucket && !bucket.includes('/')) {
      void (async () => {
        const dir = s3rverUploadsDir(s3, bucket);
        const ids = await readdir(dir).catch(() => [] as string[]);
        const uploads = [];
        for (const id of ids) {
          const key = await readFile(join(dir, id, 'key'), 'utf8').catch(() => null);
          if (key === null) continue;
          uploads.push({ key, id, initiated: (await stat(join(dir, id, 'key'))).mtime });
        }
        const prefix = url.searchParams.get('prefix') ?? '';
        const keyMarker = url.searchParams.get('key-marker') ?? '';
        const idMarker = url.searchParams.get('upload-id-marker') ?? '';
        const max = Number(url.searchParams.get('max-uploads') ?? 1000);
        const selected = uploads
          .filter((u) => u.key.startsWith(prefix))
          .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.id < b.id ? -1 : 1))
          .filter((u) => !keyMarker || u.key > keyMarker || (u.key === keyMarker && idMarker !== '' && u.id > idMarker));
        const page = selected.slice(0, max);
        const truncated = selected.length > max;
        const last = page.at(-1);
        const body =
          `<?xml version="1.0" encoding="UTF-8"?>\n<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">` +
          `<Bucket>${xml(bucket)}</Bucket><KeyMarker>${xml(keyMarker)}</KeyMarker><UploadIdMarker>${xml(idMarker)}</UploadIdMarker>` +
          `<NextKeyMarker>${truncated && last ? xml(last.key) : ''}</NextKeyMarker><NextUploadIdMarker>${truncated && last ? last.id : ''}</NextUploadIdMarker>` +
          `<Prefix>${xml(prefix)}</Prefix><MaxUploads>${max}</MaxUploads><IsTruncated>${truncated}</IsTruncated>` +
          page
            .map(
              (u) =>
                `<Upload><Key>${xml(u.key)}</Key><UploadId>${u.id}</UploadId><StorageClass>STANDARD</StorageClass>` +
                `<Initiated>${u.initiated.toISOString()}</Initiated></Upload>`,
            )
            .join('') +
          `</ListMultipartUploadsResult>`;
        res.writeHead(200, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      })().catch((err: Error) => {
        res.writeHead(500);
        res.end(err.message);
      });
      return;
    }
    const up = httpRequest({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on('error', () => req.socket.destroy());
    req.pipe(up);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function configFor(endpoint: string): Config {
  return iso.config({ storage: { endpoint, bucket: s3.bucket, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } });
}

async function putAll(objects: Array<{ key: string; body: string; test?: boolean }>, concurrency = 48): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < objects.length) {
        const o = objects[next++]!;
        await client.send(
          new PutObjectCommand({ Bucket: s3.bucket, Key: o.key, Body: o.body, ...(o.test ? { Metadata: { 'stowage-test': 'true' } } : {}) }),
        );
      }
    }),
  );
}

/**
 * Writes objects straight into s3rver 3.7's folder, in the format its FilesystemStore uses
 * (`<bucket>/<dirs>/<name>._S3rver_object`, `._S3rver_object.md5` with the hex MD5 that becomes
 * the ETag, `._S3rver_metadata.json` with content-type and x-amz-meta-*; Last-Modified is the
 * object file's mtime). 5,000 PutObjects through one event loop take ~30 s; this takes ~1 s. The
 * first test checks through the S3 API that s3rver serves them as written (keys, body, ETag,
 * metadata, Last-Modified).
 */
async function writeStored(objects: Array<{ key: string; body: string; test?: boolean; mtime?: Date }>): Promise<void> {
  const byDir = new Map<string, typeof objects>();
  for (const o of objects) {
    const dir = join(s3.directory, s3.bucket, ...o.key.split('/').slice(0, -1));
    byDir.set(dir, [...(byDir.get(dir) ?? []), o]);
  }
  for (const dir of byDir.keys()) await mkdir(dir, { recursive: true });
  let next = 0;
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      while (next < objects.length) {
        const o = objects[next++]!;
        const base = join(s3.directory, s3.bucket, o.key);
        const meta = { 'content-type': 'application/octet-stream', ...(o.test ? { 'x-amz-meta-stowage-test': 'true' } : {}) };
        await writeFile(`${base}._S3rver_object`, o.body);
        await writeFile(`${base}._S3rver_object.md5`, createHash('md5').update(o.body).digest('hex'));
        await writeFile(`${base}._S3rver_metadata.json`, JSON.stringify(meta, null, 2));
        if (o.mtime) await utimes(`${base}._S3rver_object`, o.mtime, o.mtime);
      }
    }),
  );
}

async function keysUnder(prefix: string): Promise<string[]> {
  // ListObjects v1 with markers: s3rver cannot page ListObjectsV2 on Node 17+ (see src/storage/verify.ts).
  const keys: string[] = [];
  let marker: string | undefined;
  do {
    const page = await client.send(new ListObjectsCommand({ Bucket: s3.bucket, Prefix: prefix, Marker: marker }));
    for (const o of page.Contents ?? []) keys.push(o.Key!);
    marker = page.IsTruncated ? page.Contents?.at(-1)?.Key : undefined;
  } while (marker);
  return keys.sort();
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const pad = (i: number) => String(i).padStart(4, '0');
const sink = (): Output & { lines: string[]; errLines: string[] } => {
  const lines: string[] = [];
  const errLines: string[] = [];
  return { lines, errLines, out: (l) => lines.push(l), err: (l) => errLines.push(l) };
};

// The 5,000 objects. Old: snapshots with sidecars (1,200), logs/a (1,500; every other one marked as
// test), keep/ (1,000). New: logs/b (800; every other one test), snapshots n* (500, no sidecars).
const oldSnapshots = range(600).map((i) => `u1/p1/snapshots/v${pad(i)}.zip`);
const logsA = range(1500).map((i) => `logs/a/${pad(i)}.txt`);
const keep = range(1000).map((i) => `keep/${pad(i)}.txt`);
const logsB = range(800).map((i) => `logs/b/${pad(i)}.txt`);
const newSnapshots = range(500).map((i) => `u1/p1/snapshots/n${pad(i)}.zip`);

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  proxy = await startS3Proxy(s3, { abortMultipartUpload: true });
  ext = await startListUploadsExtension(proxy.endpoint);
  const config = configFor(ext.endpoint);
  await migrate(config);
  db = createDb(config, { max: 4 });
  storage = createStorage(config);
  direct = createStorage(configFor(s3.endpoint));
  client = new S3Client({
    region: 'us-east-1',
    endpoint: s3.endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
  // Old objects were written 40 days ago (the object file's mtime is s3rver's Last-Modified).
  const mtime = new Date(Date.now() - 40 * DAY);
  await writeStored([
    ...oldSnapshots.flatMap((key) => [
      { key, body: `zip ${key}`, mtime },
      { key: sha256SidecarKey(key), body: `${'0'.repeat(64)}  ${key}\n`, mtime },
    ]),
    ...logsA.map((key, i) => ({ key, body: `log ${key}`, test: i % 2 === 0, mtime })),
    ...keep.map((key) => ({ key, body: `keep ${key}`, mtime })),
    ...logsB.map((key, i) => ({ key, body: `log ${key}`, test: i % 2 === 0 })),
    ...newSnapshots.map((key) => ({ key, body: `zip ${key}` })),
  ]);
});

afterAll(async () => {
  storage?.close();
  direct?.close();
  client?.destroy();
  await db?.close();
  await ext?.close();
  await proxy?.close();
  await s3?.close();
  await iso.cleanup();
});

describe('cleanup of objects', () => {
  it('has the 5,000 objects to work on, served by s3rver as written', async () => {
    expect((await keysUnder('')).length).toBe(5000);
    const head = await client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: logsA[0] }));
    expect(head.Metadata).toEqual({ 'stowage-test': 'true' });
    expect(head.ETag).toBe(`"${createHash('md5').update(`log ${logsA[0]}`).digest('hex')}"`);
    expect(Date.now() - head.LastModified!.getTime()).toBeGreaterThan(39 * DAY);
    expect((await client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: logsA[1] }))).Metadata).toEqual({});
    const got = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: keep[7] }));
    expect(await got.Body!.transformToString()).toBe(`keep ${keep[7]}`);
  });

  it('a dry run lists exactly what --prefix and --older-than pick; the real run deletes exactly those', async () => {
    const options = { prefix: 'logs/', olderThanDays: 30 };
    const dry = await runRecordedCleanup({ storage: direct, db, config: configFor(s3.endpoint), options: { ...options, dryRun: true } });
    expect(dry.report.objects.map((o) => o.key)).toEqual(logsA);
    expect(dry.report).toMatchObject({ scanned: 2300, deleted: 1500, errors: 0, dryRun: true });
    expect(dry.report.bytesFreed).toBe(logsA.reduce((n, k) => n + `log ${k}`.length, 0));
    expect((await keysUnder('logs/')).length).toBe(2300);

    const real = await runRecordedCleanup({ storage: direct, db, config: configFor(s3.endpoint), options: { ...options, dryRun: false } });
    expect(real.report.objects.map((o) => o.key)).toEqual(logsA);
    expect(real.report).toMatchObject({ scanned: 2300, deleted: 1500, errors: 0, dryRun: false });
    // More than one DeleteObjects batch was needed.
    expect(real.report.deleted).toBeGreaterThan(DELETE_BATCH);
    expect(await keysUnder('logs/')).toEqual(logsB);
    expect(await keysUnder('keep/')).toEqual(keep);
    expect((await keysUnder('u1/')).length).toBe(1700);

    const logs = await listCleanupLogs(db);
    expect(logs.slice(0, 2).map((l) => [l.id, l.mode, l.scanned, l.deleted, l.bytesFreed, l.errors, l.dryRun, l.prefix])).toEqual([
      [real.logId, 'objects', 2300, 1500, real.report.bytesFreed, 0, false, 'logs/'],
      [dry.logId, 'objects', 2300, 1500, dry.report.bytesFreed, 0, true, 'logs/'],
    ]);
  });

  it('the CLI deletes nothing without --force or --dry-run', async () => {
    await expect(cleanupCommand(configFor(s3.endpoint), { prefix: 'logs/' }, sink())).rejects.toMatchObject({ code: 'STOWAGE_ERR_USAGE' });
    expect((await keysUnder('logs/')).length).toBe(800);
  });

  it('--test-only picks only objects marked as test data', async () => {
    // A 100-key slice keeps the HEAD per candidate (the test mark is metadata) quick.
    const slice = logsB.slice(0, 100);
    const marked = slice.filter((_, i) => i % 2 === 0);
    const dry = sink();
    await cleanupCommand(configFor(s3.endpoint), { dryRun: true, testOnly: true, prefix: 'logs/b/00' }, dry);
    expect(dry.lines.filter((l) => l.startsWith('would delete\t')).map((l) => l.split('\t')[1])).toEqual(marked);
    expect(dry.lines.at(-1)).toMatch(/^objects: scanned 100, would delete 50 /);

    const out = sink();
    await cleanupCommand(configFor(s3.endpoint), { force: true, testOnly: true, prefix: 'logs/b/00' }, out);
    expect(await keysUnder('logs/')).toEqual(logsB.filter((k, i) => !marked.includes(k) || i >= 100));
    expect(await keysUnder('keep/')).toEqual(keep);
    const [last] = await listCleanupLogs(db, 1);
    expect(last).toMatchObject({ mode: 'objects', scanned: 100, deleted: 50, errors: 0, dryRun: false, prefix: 'logs/b/00', details: { testOnly: true } });
  });
});

describe('orphaned packs', () => {
  const packs = [
    packKey('u2', 'p1', 'v1', 'v2'),
    packKey('u2', 'p1', 'v2', 'v3'),
    packKey('u2', 'p1', 'v3', 'v4'),
  ];

  beforeAll(async () => {
    await putAll(packs.flatMap((key) => [{ key, body: `pack ${key}` }, { key: sha256SidecarKey(key), body: `${'1'.repeat(64)}  x\n` }]));
    for (const v of ['v1', 'v2', 'v3']) {
      await db.pool.query('INSERT INTO project_versions (user_id, project_id, version_id) VALUES ($1, $2, $3)', ['u2', 'p1', v]);
    }
  });

  it('go only when a version they join is gone from project_versions, with their sidecars', async () => {
    const config = configFor(s3.endpoint);
    const storage = direct;
    // Fresh packs are inside the grace period (their version row may not be committed yet).
    const fresh = await runRecordedCleanup({ storage, db, config, options: { dryRun: false, orphanedPacks: true } });
    expect(fresh.report.deleted).toBe(0);

    const first = await runRecordedCleanup({ storage, db, config, options: { dryRun: false, orphanedPacks: true, olderThanDays: 0 } });
    expect(first.report.objects.map((o) => o.key)).toEqual([packs[2], sha256SidecarKey(packs[2]!)]);
    expect(await keysUnder('u2/')).toEqual([packs[0], sha256SidecarKey(packs[0]!), packs[1], sha256SidecarKey(packs[1]!)]);

    await db.pool.query("DELETE FROM project_versions WHERE user_id = 'u2' AND version_id = 'v1'");
    const second = await runRecordedCleanup({ storage, db, config, options: { dryRun: false, orphanedPacks: true, olderThanDays: 0, prefix: 'u2/' } });
    expect(second.report.objects.map((o) => o.key)).toEqual([packs[0], sha256SidecarKey(packs[0]!)]);
    expect(await keysUnder('u2/')).toEqual([packs[1], sha256SidecarKey(packs[1]!)]);
    // Nothing else in the bucket was a pack or touched.
    expect(await keysUnder('keep/')).toEqual(keep);
    expect((await keysUnder('u1/')).length).toBe(1700);

    const logs = await listCleanupLogs(db, 3);
    expect(logs.map((l) => [l.mode, l.deleted, l.prefix])).toEqual([
      ['orphaned-packs', 2, 'u2/'],
      ['orphaned-packs', 2, null],
      ['orphaned-packs', 0, null],
    ]);
  });
});

describe('multipart uploads (AbortMultipartUpload and ListMultipartUploads: test-only extensions)', () => {
  let oldId: string;
  let freshId: string;

  beforeAll(async () => {
    const start = async (key: string) => {
      const { UploadId } = await storage.client.send(new CreateMultipartUploadCommand({ Bucket: s3.bucket, Key: key }));
      await storage.client.send(new UploadPartCommand({ Bucket: s3.bucket, Key: key, UploadId, PartNumber: 1, Body: Buffer.alloc(1024, 1) }));
      return UploadId!;
    };
    oldId = await start('mp/abandoned.bin');
    freshId = await start('mp/in-flight.bin');
    // Started two days ago, as the extension reports it.
    const past = new Date(Date.now() - 2 * DAY);
    await utimes(join(s3rverUploadsDir(s3), oldId, 'key'), past, past);
  });

  it('an abandoned upload is aborted, a recent one is left, and the store is listed again for stragglers', async () => {
    const dry = sink();
    await cleanupCommand(configFor(ext.endpoint), { dryRun: true, multipart: true, olderThanHours: 1 }, dry);
    expect(dry.lines.filter((l) => l.startsWith('would abort\t')).map((l) => l.split('\t')[2])).toEqual([oldId]);

    const out = sink();
    await cleanupCommand(configFor(ext.endpoint), { force: true, multipart: true, olderThanHours: 1 }, out);
    expect(out.lines.filter((l) => l.startsWith('aborted\t')).map((l) => l.split('\t')[2])).toEqual([oldId]);
    expect((await readdir(s3rverUploadsDir(s3))).sort()).toEqual([freshId]);
    expect(proxy.stats.abortRequests).toBe(1);
    const [last] = await listCleanupLogs(db, 1);
    expect(last).toMatchObject({ mode: 'multipart', scanned: 2, deleted: 1, errors: 0, dryRun: false, details: { stragglers: 0 } });
  });

  it('against plain s3rver, --multipart fails with a one-line message', async () => {
    const err = await cleanupCommand(configFor(s3.endpoint), { force: true, multipart: true }, sink()).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'STOWAGE_ERR_STORE' });
    expect((err as Error).message).toMatch(/^the object store does not implement ListMultipartUploads \(HTTP 501 NotImplemented\)/);
    expect((err as Error).message).not.toContain('\n');
    const [last] = await listCleanupLogs(db, 1);
    expect(last).toMatchObject({ mode: 'multipart', deleted: 0, errors: 1 });
  });
});

describe('--enforce-lifecycle', () => {
  it('applies the default rules by listing and deleting: old snapshots with their sidecars, stale uploads', async () => {
    const config = configFor(ext.endpoint);
    // The upload left open by the multipart test, now started two days ago: past the 1-day rule.
    const [open] = await readdir(s3rverUploadsDir(s3));
    const past = new Date(Date.now() - 2 * DAY);
    await utimes(join(s3rverUploadsDir(s3), open!, 'key'), past, past);
    const expected = oldSnapshots.flatMap((k) => [k, sha256SidecarKey(k)]);

    const real = await runRecordedCleanup({ storage, db, config, options: { dryRun: false, enforceLifecycle: true } });
    expect(real.report.objects.map((o) => o.key)).toEqual(expected);
    expect(new Set(real.report.objects.map((o) => o.reason))).toEqual(new Set(['lifecycle:snapshots-30d']));
    expect(real.report.uploads.map((u) => u.reason)).toEqual(['lifecycle:abort-incomplete-multipart-1d']);
    expect(await readdir(s3rverUploadsDir(s3))).toEqual([]);
    expect(await keysUnder('u1/')).toEqual(newSnapshots);
    expect(await keysUnder('keep/')).toEqual(keep);
    const [last] = await listCleanupLogs(db, 1);
    expect(last).toMatchObject({ mode: 'lifecycle', deleted: 1201, errors: 0, dryRun: false });
  });
});
