/**
 * Cleanup against real services only: the run's Ceph radosgw (test/setup/rgw.ts; a bucket of this
 * file's own), plain s3rver for the one check of a store without ListMultipartUploads, and Postgres
 * (this file's schema). Everything is written and read back through the S3 API.
 *
 * 5,000 objects across prefixes, written by PutObject in two sets: the "old" set, then a pause of
 * GAP_MS, then the "new" set. A real server sets Last-Modified itself, so ages are real:
 * - `--older-than` / `--older-than-hours` get a fractional value that puts the cut in that pause;
 * - the default lifecycle rules plus an operator's 30-day rule over every project's snapshots (a `*` rule: only
 *   cleanup can enforce it) are enforced with the cleanup's clock (`now`) set to 30 days after the
 *   pause: the old snapshots are then past the 30-day rule and the new ones are not.
 * Multipart uploads are real incomplete uploads on radosgw (CreateMultipartUpload + UploadPart),
 * one started with the old set and one with the new; ListMultipartUploads reads them back.
 */
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  UploadPartCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupCommand, type Output } from '../../src/cli/commands/storage-ops.js';
import { runRecordedCleanup } from '../../src/cleanup/recorded.js';
import { DEFAULT_LIFECYCLE_RULES, type Config } from '../../src/config.js';
import { listCleanupLogs } from '../../src/db/cleanup-logs.js';
import { migrate } from '../../src/db/migrate.js';
import { createDb, type Db } from '../../src/db/pool.js';
import { createStorage, type Storage } from '../../src/storage/client.js';
import { DELETE_BATCH } from '../../src/storage/cleanup.js';
import { packKey, sha256SidecarKey } from '../../src/storage/keys.js';
import { isolate } from '../helpers/isolation.js';
import { startS3, startS3rver, storageConfig, type TestS3 } from '../helpers/s3.js';

const DAY = 86_400_000;
const HOUR = 3_600_000;
/** The pause between the old and the new set; the age cuts fall in its middle. */
const GAP_MS = 2500;
/** PutObjects in flight: 5,000 small objects take ~7–11 s on the test radosgw (2 cores). */
const PUT_CONCURRENCY = 48;

const iso = isolate('cleanup');
let s3: TestS3;
let db: Db;
let client: S3Client;
let storage: Storage;
let config: Config;
/** When the old set was all written, and when the new set began (local clock, same host as radosgw). */
let oldDone: number;
let newStart: number;
/** The middle of the pause: old objects and uploads are older than this, new ones younger. */
let cut: number;
/** The incomplete uploads: one started with the old set, one with the new. */
let oldUpload: { key: string; id: string };
let freshUpload: { key: string; id: string };

/** An operator's own age rule over every project's snapshots (Stowage ships none: artifact retention). */
const SNAPSHOT_RULE = { id: 'snapshots-30d', prefix: '*/*/snapshots/', expireDays: 30, enabled: true };

function configFor(s: TestS3): Config {
  return iso.config({ storage: { ...storageConfig(s), region: s.region }, lifecycleRules: [SNAPSHOT_RULE, ...DEFAULT_LIFECYCLE_RULES] });
}

/** `--older-than` (days) that selects exactly what was written before `cut`, as of now. */
const daysSinceCut = () => (Date.now() - cut) / DAY;
const hoursSinceCut = () => (Date.now() - cut) / HOUR;

async function putAll(objects: Array<{ key: string; body: string; test?: boolean }>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: PUT_CONCURRENCY }, async () => {
      while (next < objects.length) {
        const o = objects[next++]!;
        await client.send(
          new PutObjectCommand({
            Bucket: s3.bucket,
            Key: o.key,
            Body: o.body,
            ...(o.test ? { Metadata: { 'stowage-test': 'true' } } : {}),
          }),
        );
      }
    }),
  );
}

/** A real incomplete multipart upload: created, one part uploaded, never completed. */
async function startUpload(key: string): Promise<{ key: string; id: string }> {
  const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: s3.bucket, Key: key }));
  await client.send(new UploadPartCommand({ Bucket: s3.bucket, Key: key, UploadId, PartNumber: 1, Body: Buffer.alloc(1024, 1) }));
  return { key, id: UploadId! };
}

async function listed(prefix: string): Promise<Array<{ key: string; lastModified: Date; size: number }>> {
  const out: Array<{ key: string; lastModified: Date; size: number }> = [];
  let token: string | undefined;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix, ContinuationToken: token }));
    for (const o of page.Contents ?? []) out.push({ key: o.Key!, lastModified: o.LastModified!, size: o.Size! });
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

async function keysUnder(prefix: string): Promise<string[]> {
  return (await listed(prefix)).map((o) => o.key);
}

/** Every incomplete upload in the bucket, as `key uploadId`, in order. */
async function openUploads(): Promise<Array<{ key: string; id: string; initiated: Date }>> {
  const out: Array<{ key: string; id: string; initiated: Date }> = [];
  let keyMarker: string | undefined;
  let idMarker: string | undefined;
  for (;;) {
    const page = await client.send(new ListMultipartUploadsCommand({ Bucket: s3.bucket, KeyMarker: keyMarker, UploadIdMarker: idMarker }));
    for (const u of page.Uploads ?? []) out.push({ key: u.Key!, id: u.UploadId!, initiated: u.Initiated! });
    if (!page.IsTruncated) return out;
    keyMarker = page.NextKeyMarker;
    idMarker = page.NextUploadIdMarker;
  }
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
const oldKeys = [...oldSnapshots.flatMap((k) => [k, sha256SidecarKey(k)]), ...logsA, ...keep];
const newKeys = [...logsB, ...newSnapshots];

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  client = s3.client;
  config = configFor(s3);
  await migrate(config);
  db = createDb(config, { max: 4 });
  storage = createStorage(config);

  await putAll([
    ...oldSnapshots.flatMap((key) => [
      { key, body: `zip ${key}` },
      { key: sha256SidecarKey(key), body: `${'0'.repeat(64)}  ${key}\n` },
    ]),
    ...logsA.map((key, i) => ({ key, body: `log ${key}`, test: i % 2 === 0 })),
    ...keep.map((key) => ({ key, body: `keep ${key}` })),
  ]);
  oldUpload = await startUpload('mp/abandoned.bin');
  oldDone = Date.now();
  await sleep(GAP_MS);
  newStart = Date.now();
  freshUpload = await startUpload('mp/in-flight.bin');
  await putAll([
    ...logsB.map((key, i) => ({ key, body: `log ${key}`, test: i % 2 === 0 })),
    ...newSnapshots.map((key) => ({ key, body: `zip ${key}` })),
  ]);
  cut = (oldDone + newStart) / 2;
}, 120_000);

afterAll(async () => {
  storage?.close();
  await db?.close();
  await s3?.close();
  await iso.cleanup();
});

describe('cleanup of objects', () => {
  it('has the 5,000 objects to work on, as written, with the old set older than the cut and the new set younger', async () => {
    const all = await listed('');
    expect(all.map((o) => o.key)).toEqual([...oldKeys, ...newKeys].sort());
    // The server's Last-Modified falls on the right side of the cut, with margin (it may be
    // rounded to the second or so; the cut is GAP_MS / 2 from either set).
    const old = new Set(oldKeys);
    for (const o of all) {
      if (old.has(o.key)) expect(o.lastModified.getTime(), o.key).toBeLessThan(cut);
      else expect(o.lastModified.getTime(), o.key).toBeGreaterThan(cut);
    }
    const head = await client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: logsA[0] }));
    expect(head.Metadata).toEqual({ 'stowage-test': 'true' });
    expect(head.ETag).toBe(`"${createHash('md5').update(`log ${logsA[0]}`).digest('hex')}"`);
    expect((await client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: logsA[1] }))).Metadata).toEqual({});
    const got = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: keep[7] }));
    expect(await got.Body!.transformToString()).toBe(`keep ${keep[7]}`);
    expect((await openUploads()).map((u) => u.id).sort()).toEqual([oldUpload.id, freshUpload.id].sort());
  });

  it('a dry run lists exactly what --prefix and --older-than pick; the real run deletes exactly those', async () => {
    const dry = await runRecordedCleanup({
      storage,
      db,
      config,
      options: { prefix: 'logs/', olderThanDays: daysSinceCut(), dryRun: true },
    });
    expect(dry.report.objects.map((o) => o.key)).toEqual(logsA);
    expect(dry.report).toMatchObject({ scanned: 2300, deleted: 1500, errors: 0, dryRun: true });
    expect(dry.report.bytesFreed).toBe(logsA.reduce((n, k) => n + `log ${k}`.length, 0));
    expect((await keysUnder('logs/')).length).toBe(2300);

    const real = await runRecordedCleanup({
      storage,
      db,
      config,
      options: { prefix: 'logs/', olderThanDays: daysSinceCut(), dryRun: false },
    });
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
    await expect(cleanupCommand(config, { prefix: 'logs/' }, sink())).rejects.toMatchObject({ code: 'STOWAGE_ERR_USAGE' });
    expect((await keysUnder('logs/')).length).toBe(800);
  });

  it('--test-only picks only objects marked as test data', async () => {
    // A 100-key slice keeps the HEAD per candidate (the test mark is metadata) quick.
    const slice = logsB.slice(0, 100);
    const marked = slice.filter((_, i) => i % 2 === 0);
    const dry = sink();
    await cleanupCommand(config, { dryRun: true, testOnly: true, prefix: 'logs/b/00' }, dry);
    expect(dry.lines.filter((l) => l.startsWith('would delete\t')).map((l) => l.split('\t')[1])).toEqual(marked);
    expect(dry.lines.at(-1)).toMatch(/^objects: scanned 100, would delete 50 /);

    const out = sink();
    await cleanupCommand(config, { force: true, testOnly: true, prefix: 'logs/b/00' }, out);
    expect(await keysUnder('logs/')).toEqual(logsB.filter((k, i) => !marked.includes(k) || i >= 100));
    expect(await keysUnder('keep/')).toEqual(keep);
    const [last] = await listCleanupLogs(db, 1);
    expect(last).toMatchObject({
      mode: 'objects',
      scanned: 100,
      deleted: 50,
      errors: 0,
      dryRun: false,
      prefix: 'logs/b/00',
      details: { testOnly: true },
    });
  });
});

describe('orphaned packs', () => {
  const packs = [packKey('u2', 'p1', 'v1', 'v2'), packKey('u2', 'p1', 'v2', 'v3'), packKey('u2', 'p1', 'v3', 'v4')];

  beforeAll(async () => {
    await putAll(
      packs.flatMap((key) => [
        { key, body: `pack ${key}` },
        { key: sha256SidecarKey(key), body: `${'1'.repeat(64)}  x\n` },
      ]),
    );
    for (const v of ['v1', 'v2', 'v3']) {
      await db.pool.query('INSERT INTO project_versions (user_id, project_id, version_id) VALUES ($1, $2, $3)', ['u2', 'p1', v]);
    }
  });

  it('go only when a version they join is gone from project_versions, with their sidecars', async () => {
    // Fresh packs are inside the grace period (their version row may not be committed yet).
    const fresh = await runRecordedCleanup({ storage, db, config, options: { dryRun: false, orphanedPacks: true } });
    expect(fresh.report.deleted).toBe(0);
    expect((await keysUnder('u2/')).length).toBe(6);

    const first = await runRecordedCleanup({ storage, db, config, options: { dryRun: false, orphanedPacks: true, olderThanDays: 0 } });
    expect(first.report.objects.map((o) => o.key)).toEqual([packs[2], sha256SidecarKey(packs[2]!)]);
    expect(await keysUnder('u2/')).toEqual([packs[0], sha256SidecarKey(packs[0]!), packs[1], sha256SidecarKey(packs[1]!)]);

    await db.pool.query("DELETE FROM project_versions WHERE user_id = 'u2' AND version_id = 'v1'");
    const second = await runRecordedCleanup({
      storage,
      db,
      config,
      options: { dryRun: false, orphanedPacks: true, olderThanDays: 0, prefix: 'u2/' },
    });
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

describe('multipart uploads (real incomplete uploads on radosgw)', () => {
  it('an abandoned upload is aborted, a recent one is left, and ListMultipartUploads then shows only the recent one', async () => {
    // Initiated as the server reports it: the abandoned one before the cut, the in-flight one after.
    const before = await openUploads();
    expect(before.find((u) => u.id === oldUpload.id)!.initiated.getTime()).toBeLessThan(cut);
    expect(before.find((u) => u.id === freshUpload.id)!.initiated.getTime()).toBeGreaterThan(cut);

    const dry = sink();
    await cleanupCommand(config, { dryRun: true, multipart: true, olderThanHours: hoursSinceCut() }, dry);
    expect(dry.lines.filter((l) => l.startsWith('would abort\t')).map((l) => l.split('\t').slice(1, 3))).toEqual([
      [oldUpload.key, oldUpload.id],
    ]);
    expect((await openUploads()).length).toBe(2);

    const out = sink();
    await cleanupCommand(config, { force: true, multipart: true, olderThanHours: hoursSinceCut() }, out);
    expect(out.lines.filter((l) => l.startsWith('aborted\t')).map((l) => l.split('\t').slice(1, 3))).toEqual([
      [oldUpload.key, oldUpload.id],
    ]);
    expect((await openUploads()).map((u) => [u.key, u.id])).toEqual([[freshUpload.key, freshUpload.id]]);
    // Aborting removed the upload, not an object of that name (there never was one).
    expect(await keysUnder('mp/')).toEqual([]);
    const [last] = await listCleanupLogs(db, 1);
    expect(last).toMatchObject({ mode: 'multipart', scanned: 2, deleted: 1, errors: 0, dryRun: false, details: { stragglers: 0 } });
  });

  it('against plain s3rver, --multipart fails with a one-line message', async () => {
    const plain = await startS3rver(iso.bucket);
    try {
      const err = await cleanupCommand(configFor(plain), { force: true, multipart: true }, sink()).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'STOWAGE_ERR_STORE' });
      expect((err as Error).message).toMatch(/^the object store does not implement ListMultipartUploads \(HTTP 501 NotImplemented\)/);
      expect((err as Error).message).not.toContain('\n');
      const [last] = await listCleanupLogs(db, 1);
      expect(last).toMatchObject({ mode: 'multipart', deleted: 0, errors: 1 });
    } finally {
      await plain.close();
    }
  });
});

describe('--enforce-lifecycle', () => {
  it('applies the configured rules by listing and deleting: old snapshots with their sidecars, stale uploads', async () => {
    // As of 30 days after the cut: the old snapshots are past the 30-day rule, the new ones are
    // not yet, and the upload left open by the multipart test is past the 1-day abort rule.
    const now = cut + 30 * DAY;
    const expected = oldSnapshots.flatMap((k) => [k, sha256SidecarKey(k)]);

    const dry = await runRecordedCleanup({ storage, db, config, now, options: { dryRun: true, enforceLifecycle: true } });
    expect(dry.report.objects.map((o) => o.key)).toEqual(expected);
    expect(dry.report.uploads.map((u) => u.uploadId)).toEqual([freshUpload.id]);
    expect((await keysUnder('u1/')).length).toBe(1700);
    expect((await openUploads()).length).toBe(1);

    const real = await runRecordedCleanup({ storage, db, config, now, options: { dryRun: false, enforceLifecycle: true } });
    expect(real.report.objects.map((o) => o.key)).toEqual(expected);
    expect(new Set(real.report.objects.map((o) => o.reason))).toEqual(new Set(['lifecycle:snapshots-30d']));
    expect(real.report.uploads.map((u) => [u.uploadId, u.reason])).toEqual([[freshUpload.id, 'lifecycle:abort-incomplete-multipart-1d']]);
    expect(await openUploads()).toEqual([]);
    expect(await keysUnder('u1/')).toEqual(newSnapshots);
    expect(await keysUnder('keep/')).toEqual(keep);
    const [last] = await listCleanupLogs(db, 1);
    expect(last).toMatchObject({ id: real.logId, mode: 'lifecycle', deleted: 1201, errors: 0, dryRun: false });
  });
});
