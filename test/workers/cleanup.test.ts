/**
 * The cleanup processor against real services: s3rver, Postgres (this file's schema) and Redis
 * (the domain-event stream). The ProcessorContext is built by hand, as the runtime would.
 */
import { HeadObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config.js';
import { listCleanupLogs } from '../../src/db/cleanup-logs.js';
import { migrate } from '../../src/db/migrate.js';
import { createDb, type Db } from '../../src/db/pool.js';
import { isPermanent } from '../../src/errors.js';
import { createEventStream, type CleanupPayload, type EventStream } from '../../src/queues/index.js';
import type { Storage } from '../../src/storage/client.js';
import { sha256SidecarKey } from '../../src/storage/keys.js';
import { cleanup } from '../../src/workers/cleanup.js';
import { runProcessor } from '../helpers/fleet.js';
import { isolate, REDIS_URL } from '../helpers/isolation.js';
import { startS3, type TestS3 } from '../helpers/s3.js';

const iso = isolate('cleanupjob');
let s3: TestS3;
let db: Db;
let redis: Redis;
let queue: Queue;
let events: EventStream;
let client: S3Client;
let config: Config;
const storages: Storage[] = [];

function run(data: CleanupPayload) {
  return runProcessor('cleanup', cleanup, data, { config, db, events, queue, storages });
}

async function exists(key: string): Promise<boolean> {
  try {
    await client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key }));
    return true;
  } catch {
    return false;
  }
}

const testKeys = ['t/a.zip', 't/b.zip'];
const realKeys = ['t/c.zip', 'other/d.zip'];

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  config = iso.config({ storage: { endpoint: s3.endpoint, bucket: s3.bucket, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } });
  await migrate(config);
  db = createDb(config, { max: 2 });
  redis = new Redis(REDIS_URL);
  events = createEventStream(redis, iso.prefix);
  queue = new Queue('cleanup', { connection: redis.duplicate(), prefix: iso.prefix });
  client = new S3Client({
    region: 'us-east-1',
    endpoint: s3.endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
  for (const key of [...testKeys, ...realKeys]) {
    const test = testKeys.includes(key);
    await client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: `body of ${key}`, ...(test ? { Metadata: { 'stowage-test': 'true' } } : {}) }));
    await client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: sha256SidecarKey(key), Body: `${'a'.repeat(64)}  x\n` }));
  }
});

afterAll(async () => {
  for (const s of storages) s.close();
  client?.destroy();
  await queue?.close();
  redis?.disconnect();
  await db?.close();
  await s3?.close();
  await iso.cleanup();
});

describe('cleanup processor', () => {
  it('a dry run (the payload default) deletes nothing and still records the run', async () => {
    const { result, emitted, jobId } = await run({ testOnly: true, prefix: 't/' });
    expect(result).toMatchObject({ mode: 'objects', scanned: 6, deleted: 4, dryRun: true, errors: 0 });
    for (const key of [...testKeys, ...realKeys]) expect(await exists(key)).toBe(true);
    const [row] = await listCleanupLogs(db, 1);
    expect(row).toMatchObject({ mode: 'objects', scanned: 6, deleted: 4, dryRun: true, queue: 'cleanup', jobId, prefix: 't/' });
    expect(emitted.map((e) => [e.type, e.data])).toEqual([['cleanup_completed', { mode: 'objects', scanned: 6, deleted: 4, bytesFreed: row!.bytesFreed, dryRun: true }]]);
  });

  it('deletes the marked objects with their sidecars, writes the r2_cleanup_logs row and emits cleanup_completed', async () => {
    const { result, emitted, jobId } = await run({ dryRun: false, testOnly: true, prefix: 't/' });
    const bytes = testKeys.reduce((n, k) => n + `body of ${k}`.length + `${'a'.repeat(64)}  x\n`.length, 0);
    expect(result).toMatchObject({ mode: 'objects', scanned: 6, deleted: 4, bytesFreed: bytes, dryRun: false, errors: 0 });
    for (const key of testKeys) {
      expect(await exists(key)).toBe(false);
      expect(await exists(sha256SidecarKey(key))).toBe(false);
    }
    for (const key of realKeys) expect(await exists(key)).toBe(true);
    const [row] = await listCleanupLogs(db, 1);
    expect(row).toMatchObject({ mode: 'objects', scanned: 6, deleted: 4, bytesFreed: bytes, errors: 0, dryRun: false, queue: 'cleanup', jobId });
    expect(row!.finishedAt.getTime()).toBeGreaterThanOrEqual(row!.startedAt.getTime());
    expect(emitted).toHaveLength(1);
    expect(emitted[0]).toMatchObject({ type: 'cleanup_completed', queue: 'cleanup', jobId, data: { mode: 'objects', scanned: 6, deleted: 4, bytesFreed: bytes, dryRun: false } });
  });

  it('enforceLifecycle on a store without ListMultipartUploads completes and notes what it skipped', async () => {
    const { result } = await run({ dryRun: false, enforceLifecycle: true });
    expect(result).toMatchObject({ mode: 'lifecycle', deleted: 0, errors: 0, unsupported: ['ListMultipartUploads'] });
    const [row] = await listCleanupLogs(db, 1);
    expect(row).toMatchObject({ mode: 'lifecycle', errors: 0, details: { unsupported: ['ListMultipartUploads'] } });
  });

  it('refuses a payload that selects nothing, permanently', async () => {
    const err = await run({ dryRun: false }).catch((e: unknown) => e);
    expect(isPermanent(err)).toBe(true);
    expect((err as Error).message).toMatch(/nothing selected/);
  });
});
