/**
 * The storage contract, on both real servers the project runs on: radosgw (the tests' S3 server)
 * and s3rver (the embedded store of `npm run dev`). For each: the capability probe equals that
 * server's column of docs/storage.md's compatibility table (so the docs cannot drift from what is
 * measured), `stowage verify --capabilities` prints it, and what Stowage builds on those
 * capabilities works either way: a multipart upload whose receipt has the object's real ETag,
 * concurrent manifest writers, listings that page past 1,000 keys, batch deletes.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { redisKeys } from '../../src/queues/keys.js';
import { createStorage, type Storage } from '../../src/storage/client.js';
import { CAPABILITY_LABELS, capabilityReport, formatCapability, type CapabilityName } from '../../src/storage/capabilities.js';
import { runCleanup } from '../../src/storage/cleanup.js';
import { readManifest, upsertManifestEntry } from '../../src/storage/manifest.js';
import { presignDownload } from '../../src/storage/presign.js';
import { uploadStream } from '../../src/storage/upload.js';
import { listObjects } from '../../src/storage/verify.js';
import { CLI_MAIN } from '../helpers/cli.js';
import { isolate, REDIS_URL } from '../helpers/isolation.js';
import { startTestS3, storageConfig, storageEnv, type TestS3, type TestS3Kind } from '../helpers/s3.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const COLUMNS: Record<TestS3Kind, string> = { rgw: 'Ceph RGW 16 (tested)', s3rver: 's3rver 3.7 (tested)' };

/** docs/storage.md's compatibility table: label → column → cell. */
function docsTable(): Map<string, Record<string, string>> {
  const text = readFileSync(new URL('../../docs/storage.md', import.meta.url), 'utf8');
  const section = text.slice(text.indexOf('## Store compatibility'));
  const rows = section
    .split('\n')
    .filter((l) => l.startsWith('|'))
    .map((l) =>
      l
        .slice(1, -1)
        .split('|')
        .map((c) => c.trim()),
    );
  const [header, , ...body] = rows;
  return new Map(body.map((cells) => [cells[0]!, Object.fromEntries(header!.map((h, i) => [h, cells[i]!]))]));
}

for (const kind of ['rgw', 's3rver'] as const) {
  describe(`storage contract on ${kind}`, () => {
    const iso = isolate(`contract${kind}`);
    let s3: TestS3;
    let storage: Storage;
    let redis: Redis;

    beforeAll(async () => {
      s3 = await startTestS3(kind, iso.bucket);
      storage = createStorage(iso.config({ storage: storageConfig(s3) }));
      redis = new Redis(REDIS_URL);
    });
    afterAll(async () => {
      storage?.close();
      redis?.disconnect();
      await s3?.close();
      await iso.cleanup();
    });

    it(`the probe measures what docs/storage.md's "${COLUMNS[kind]}" column says, and cleans up after itself`, async () => {
      const report = await capabilityReport(storage);
      const table = docsTable();
      for (const [name, label] of Object.entries(CAPABILITY_LABELS) as Array<[CapabilityName, string]>) {
        const row = table.get(label);
        expect(row, `docs row "${label}"`).toBeDefined();
        expect(`${label}: ${formatCapability(report.capabilities[name])}`).toBe(`${label}: ${row![COLUMNS[kind]]}`);
      }
      const left = [];
      for await (const o of listObjects(storage, { prefix: '_stowage/' })) left.push(o.key);
      expect(left).toEqual([]);
    });

    it('`stowage verify --capabilities --json` prints the same table from a process', async () => {
      const { stdout, stderr } = await promisify(execFile)(process.execPath, [CLI_MAIN, 'verify', '--capabilities', '--json'], {
        cwd: ROOT,
        env: { PATH: process.env.PATH, HOME: process.env.HOME, ...storageEnv(s3), REDIS_URL, LOG_LEVEL: 'silent' },
      });
      // No runtime warning of any kind on stderr (Node 24; the SDK's version notice is gone).
      expect(stderr).toBe('');
      const printed = JSON.parse(stdout) as { capabilities: Record<string, unknown>; evidence: Record<string, string> };
      expect(printed.capabilities).toEqual((await capabilityReport(storage)).capabilities);
      expect(Object.keys(printed.evidence).sort()).toEqual(Object.keys(CAPABILITY_LABELS).sort());
    });

    it("a multipart upload's result carries the object's real ETag, equal to HEAD's", async () => {
      const body = randomBytes(storage.partSize * 2 + 12345);
      const result = await uploadStream(storage, { key: 'mp/object.bin', body: Readable.from([body]) });
      const head = await s3.client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: 'mp/object.bin' }));
      expect(result.size).toBe(body.length);
      // radosgw answers Complete with an empty ETag; HEAD has the multipart form (MD5 of MD5s, -parts).
      expect(result.etag).toMatch(kind === 'rgw' ? /^"[0-9a-f]{32}-3"$/ : /^"[0-9a-f]{32}(-3)?"$/);
      expect(result.etag).toBe(head.ETag);
    });

    it('20 concurrent manifest writers leave 20 entries', { timeout: 30_000 }, async () => {
      const deps = {
        storage,
        redis: () => redis,
        lockKey: (module: string, userId: string) => redisKeys.manifestLock(iso.prefix, module, userId),
      };
      const entry = (id: string) => ({
        id,
        key: `m/u/${id}.json`,
        format: 'json' as const,
        record_count: 1,
        size: 1,
        sha256: '0'.repeat(64),
        created_at: new Date().toISOString(),
      });
      const updates = await Promise.all(Array.from({ length: 20 }, (_, i) => upsertManifestEntry(deps, 'contract', 'u', entry(`w${i}`))));
      expect(new Set(updates.map((u) => u.mode))).toEqual(new Set([kind === 'rgw' ? 'conditional' : 'lock']));
      const { entries } = await readManifest(storage, 'contract', 'u');
      expect(entries.map((e) => e.id).sort()).toEqual(Array.from({ length: 20 }, (_, i) => `w${i}`).sort());
    });

    it('lists past one page (1,000 keys) in key order, and deletes them in batches', { timeout: 60_000 }, async () => {
      const keys = Array.from({ length: 1_050 }, (_, i) => `many/${String(i).padStart(4, '0')}.txt`);
      let next = 0;
      await Promise.all(
        Array.from({ length: 32 }, async () => {
          while (next < keys.length) {
            const key = keys[next++]!;
            await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: key }));
          }
        }),
      );
      const listed: string[] = [];
      for await (const o of listObjects(storage, { prefix: 'many/' })) listed.push(o.key);
      expect(listed).toEqual(keys);
      const report = await runCleanup({ storage }, { dryRun: false, prefix: 'many/' });
      expect(report).toMatchObject({ deleted: 1_050, errors: 0 });
      const after: string[] = [];
      for await (const o of listObjects(storage, { prefix: 'many/' })) after.push(o.key);
      expect(after).toEqual([]);
    });

    it(
      kind === 'rgw' ? 'refuses a presigned URL with a changed signature' : 'does not check presigned signatures (documented)',
      async () => {
        await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: 'signed.txt', Body: 'signed' }));
        const { url } = await presignDownload(storage, { key: 'signed.txt', expiresInSeconds: 600 });
        const u = new URL(url);
        const signature = u.searchParams.get('X-Amz-Signature')!;
        u.searchParams.set('X-Amz-Signature', `${signature.slice(0, -1)}${signature.endsWith('0') ? '1' : '0'}`);
        const res = await fetch(u);
        await res.arrayBuffer();
        expect(res.status).toBe(kind === 'rgw' ? 403 : 200);
      },
    );
  });
}
