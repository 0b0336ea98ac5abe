/**
 * uploadStream with `resume`, in process, against radosgw (through the counting proxy,
 * test/helpers/s3-proxy.ts) and s3rver (no ListParts). A crash is stood in for by freezing the
 * first attempt: its resume store stops answering once it has recorded `k` parts and its body
 * gives nothing after part k + 1, so the attempt makes no further call, as a killed process would
 * not; with one part in flight the store then holds k recorded parts and one acknowledged but
 * unrecorded. (The real SIGKILL of a worker
 * process is test/chaos/resume.test.ts.)
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, UploadPartCommand } from '@aws-sdk/client-s3';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createStorage, type Storage } from '../../src/storage/client.js';
import { createLogger } from '../../src/observability/logger.js';
import { redisResumeStore, type ResumeStore, type UploadState } from '../../src/storage/resume.js';
import { uploadStream, type UploadStreamOptions } from '../../src/storage/upload.js';
import { isolate, REDIS_URL } from '../helpers/isolation.js';
import { startS3, startS3rver, type TestS3 } from '../helpers/s3.js';
import { startS3Proxy, type S3Proxy } from '../helpers/s3-proxy.js';

const MiB = 1024 * 1024;
const PART = 5 * MiB;
/** 5 parts: four of 5 MiB and one of 3 MiB. */
const TOTAL = 23 * MiB;

const iso = isolate('resume');
let s3: TestS3;
let proxy: S3Proxy;
let redis: Redis;
const storages: Storage[] = [];
let seq = 0;

function storageAt(target: TestS3, endpoint: string, partSizeMb = PART / MiB): Storage {
  const storage = createStorage(
    iso.config({
      storage: {
        endpoint,
        bucket: target.bucket,
        accessKeyId: target.accessKeyId,
        secretAccessKey: target.secretAccessKey,
        partSizeMb,
        // One part in flight: the frozen attempt stops with exactly one part acknowledged and unrecorded.
        queueSize: 1,
      },
    }),
  );
  storages.push(storage);
  return storage;
}

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  proxy = await startS3Proxy(s3);
  redis = new Redis(REDIS_URL);
});

afterAll(async () => {
  for (const s of storages) s.close();
  redis?.disconnect();
  await proxy?.close();
  await s3?.close();
  await iso.cleanup();
});

/** Deterministic bytes: every call of `body()` streams the same `data` in 1 MiB chunks. */
function source(data: Buffer) {
  const body = () =>
    Readable.from(
      (function* () {
        for (let i = 0; i < data.length; i += MiB) yield data.subarray(i, i + MiB);
      })(),
    );
  return { body, sha256: createHash('sha256').update(data).digest('hex'), size: data.length };
}

function newStore(): ResumeStore {
  return redisResumeStore(redis, `${iso.prefix}:stowage:upload-state:test:${++seq}:artifact`);
}

/** `inner`, until `parts` parts are recorded: then it never answers again (the process "died"). */
function freezing(inner: ResumeStore, parts: number): { store: ResumeStore; frozen: Promise<void> } {
  let recorded = 0;
  let onFrozen!: () => void;
  const frozen = new Promise<void>((r) => (onFrozen = r));
  const never = () => new Promise<never>(() => {});
  return {
    frozen,
    store: {
      name: inner.name,
      load: () => inner.load(),
      begin: (h) => inner.begin(h),
      async addPart(p) {
        if (recorded >= parts) {
          onFrozen();
          return never();
        }
        recorded++;
        await inner.addPart(p);
      },
      clear: never,
    },
  };
}

/** A logger whose lines are kept, to check what the upload said. */
function capturedLogger() {
  const lines: { msg: string; level: string }[] = [];
  const logger = createLogger(
    { level: 'debug' },
    new Writable({
      write(chunk: Buffer, _e, cb) {
        lines.push(JSON.parse(chunk.toString()) as { msg: string; level: string });
        cb();
      },
    }),
  );
  return { logger, messages: () => lines.map((l) => l.msg) };
}

/** Start an upload of `data` and "kill" it once `parts` parts are recorded; what it left. */
async function interrupted(storage: Storage, key: string, data: Buffer, parts: number) {
  const inner = newStore();
  const { store, frozen } = freezing(inner, parts);
  // The body stops after part k + 1 too: once the record of that part times out
  // (STATE_TIMEOUT_MS) the attempt waits for bytes that never come, and sends nothing more.
  const stalled = () =>
    Readable.from(
      (async function* () {
        for (let i = 0; i < (parts + 1) * PART; i += MiB) yield data.subarray(i, i + MiB);
        await new Promise<never>(() => {});
      })(),
    );
  const upload = uploadStream(storage, { key, body: stalled, resume: store, contentType: 'application/zip' });
  upload.catch(() => {});
  await frozen;
  const state = (await inner.load()) as UploadState;
  return { store: inner, state, sentBefore: proxy.partRequestsFor(key) };
}

async function openUploadIds(key: string): Promise<string[]> {
  const page = await s3.client.send(new ListMultipartUploadsCommand({ Bucket: s3.bucket, Prefix: key }));
  return (page.Uploads ?? []).filter((u) => u.Key === key).map((u) => u.UploadId!);
}

async function objectSha256(target: TestS3, key: string): Promise<string> {
  const out = await target.client.send(new GetObjectCommand({ Bucket: target.bucket, Key: key }));
  return createHash('sha256')
    .update(await out.Body!.transformToByteArray())
    .digest('hex');
}

describe('resumable uploads on radosgw', () => {
  it('resumes: skips the recorded parts, re-sends the unrecorded ones, and stores the same bytes', async () => {
    const storage = storageAt(s3, proxy.endpoint);
    const data = randomBytes(TOTAL);
    const key = 'resume/same.zip';
    const left = await interrupted(storage, key, data, 2);
    expect(left.state.parts.map((p) => p.partNumber)).toEqual([1, 2]);
    // Part 3 reached the store before the "crash" but was never recorded.
    expect(left.sentBefore).toBe(3);

    const { logger, messages } = capturedLogger();
    const src = source(data);
    const progress: number[] = [];
    const result = await uploadStream(storage, {
      key,
      body: src.body,
      resume: left.store,
      contentType: 'application/zip',
      logger,
      onProgress: (n) => progress.push(n),
    } satisfies UploadStreamOptions);

    expect(proxy.partRequestsFor(key) - left.sentBefore).toBe(3); // parts 3, 4, 5
    expect(result).toMatchObject({ size: TOTAL, sha256: src.sha256, resumedParts: 2 });
    expect(await objectSha256(s3, key)).toBe(src.sha256);
    // The object keeps what the first attempt created it with.
    const head = await s3.client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key }));
    expect(head.ContentType).toBe('application/zip');
    expect(progress.at(-1)).toBe(TOTAL);
    expect(messages()).toContain('resumed upload completed: the parts an interrupted attempt had stored were verified and not sent again');
    expect(await left.store.load()).toBeNull();
    expect(await openUploadIds(key)).toEqual([]);
  });

  it('two takeovers at once in one process (one shared hash thread) each store their own bytes and SHA-256', async () => {
    const storage = storageAt(s3, proxy.endpoint);
    const uploads = ['resume/twin-a.zip', 'resume/twin-b.zip'].map((key) => ({ key, data: randomBytes(TOTAL) }));
    const left = await Promise.all(uploads.map((u) => interrupted(storage, u.key, u.data, 2)));

    // Both resume together: their parts reach the one thread interleaved.
    const results = await Promise.all(
      uploads.map((u, i) => uploadStream(storage, { key: u.key, body: source(u.data).body, resume: left[i]!.store })),
    );
    for (const [i, u] of uploads.entries()) {
      const expected = source(u.data).sha256;
      expect(results[i]).toMatchObject({ size: TOTAL, sha256: expected, resumedParts: 2 });
      expect(await objectSha256(s3, u.key)).toBe(expected);
    }
    expect(results[0]!.sha256).not.toBe(results[1]!.sha256);
  });

  it('restarts from zero when a recorded part no longer hashes the same (the source changed)', async () => {
    const storage = storageAt(s3, proxy.endpoint);
    const data = randomBytes(TOTAL);
    const key = 'resume/changed.zip';
    const left = await interrupted(storage, key, data, 2);
    const changed = Buffer.from(data);
    changed.writeUInt8(changed.readUInt8(PART + 7) ^ 0xff, PART + 7); // one byte of part 2

    const { logger, messages } = capturedLogger();
    const src = source(changed);
    const result = await uploadStream(storage, { key, body: src.body, resume: left.store, logger });

    expect(messages()).toContain(
      'the source changed since the interrupted attempt: its multipart upload is aborted and the upload starts from zero',
    );
    expect(result).toMatchObject({ sha256: src.sha256, resumedParts: 0 });
    expect(proxy.partRequestsFor(key) - left.sentBefore).toBe(5);
    expect(await objectSha256(s3, key)).toBe(src.sha256);
    expect(await openUploadIds(key)).toEqual([]); // the old upload was aborted
  });

  it('restarts when the source now ends before a recorded part, even with the same first bytes', async () => {
    const storage = storageAt(s3, proxy.endpoint);
    const data = randomBytes(TOTAL);
    const key = 'resume/shorter.zip';
    const left = await interrupted(storage, key, data, 3);
    // Parts 1 and 2 are byte-identical; part 3 (recorded) is gone.
    const src = source(data.subarray(0, 2 * PART));
    const result = await uploadStream(storage, { key, body: src.body, resume: left.store });

    expect(result).toMatchObject({ size: 2 * PART, sha256: src.sha256, resumedParts: 0 });
    expect(await objectSha256(s3, key)).toBe(src.sha256);
    expect(await openUploadIds(key)).toEqual([]);
  });

  it('restarts when the store lists a part other than the recorded one (overwritten behind its back)', async () => {
    const storage = storageAt(s3, proxy.endpoint);
    const data = randomBytes(TOTAL);
    const key = 'resume/overwritten.zip';
    const left = await interrupted(storage, key, data, 2);
    await s3.client.send(
      new UploadPartCommand({ Bucket: s3.bucket, Key: key, UploadId: left.state.uploadId, PartNumber: 1, Body: randomBytes(PART) }),
    );

    const { logger, messages } = capturedLogger();
    const src = source(data);
    const result = await uploadStream(storage, { key, body: src.body, resume: left.store, logger });

    expect(messages()).toContain('not resuming the interrupted multipart upload: it is aborted and the upload starts from zero');
    expect(result).toMatchObject({ sha256: src.sha256, resumedParts: 0 });
    expect(proxy.partRequestsFor(key) - left.sentBefore).toBe(5);
    expect(await objectSha256(s3, key)).toBe(src.sha256);
    expect(await openUploadIds(key)).toEqual([]);
  });

  it('restarts when the configured part size changed since the interrupted attempt', async () => {
    const data = randomBytes(TOTAL);
    const key = 'resume/part-size.zip';
    const left = await interrupted(storageAt(s3, proxy.endpoint), key, data, 2);
    const src = source(data);
    const result = await uploadStream(storageAt(s3, proxy.endpoint, 6), { key, body: src.body, resume: left.store });

    expect(result).toMatchObject({ sha256: src.sha256, resumedParts: 0 });
    expect(proxy.partRequestsFor(key) - left.sentBefore).toBe(Math.ceil(TOTAL / (6 * MiB)));
    expect(await openUploadIds(key)).toEqual([]);
  });

  it('restarts cleanly when the upload was aborted behind its back (NoSuchUpload)', async () => {
    const storage = storageAt(s3, proxy.endpoint);
    const data = randomBytes(TOTAL);
    const key = 'resume/gone.zip';
    const left = await interrupted(storage, key, data, 2);
    const { AbortMultipartUploadCommand } = await import('@aws-sdk/client-s3');
    await s3.client.send(new AbortMultipartUploadCommand({ Bucket: s3.bucket, Key: key, UploadId: left.state.uploadId }));

    const { logger, messages } = capturedLogger();
    const src = source(data);
    const result = await uploadStream(storage, { key, body: src.body, resume: left.store, logger });

    expect(messages()).toContain(
      'the interrupted multipart upload is gone from the store (aborted, expired or completed): uploading from zero',
    );
    expect(result).toMatchObject({ sha256: src.sha256, resumedParts: 0 });
    expect(proxy.partRequestsFor(key) - left.sentBefore).toBe(5);
    expect(await left.store.load()).toBeNull();
  });

  it('needs a body it can make again', async () => {
    const storage = storageAt(s3, s3.endpoint);
    await expect(uploadStream(storage, { key: 'resume/x', body: Readable.from([Buffer.alloc(1)]), resume: newStore() })).rejects.toThrow(
      /`resume` needs `body` as a function/,
    );
  });

  it('a body under one part is one PutObject and records nothing', async () => {
    const storage = storageAt(s3, proxy.endpoint);
    const store = newStore();
    const src = source(randomBytes(PART - 1));
    const result = await uploadStream(storage, { key: 'resume/small', body: src.body, resume: store });
    expect(result).toMatchObject({ size: PART - 1, sha256: src.sha256 });
    expect(proxy.partRequestsFor('resume/small')).toBe(0);
    expect(await store.load()).toBeNull();
  });
});

describe('resumable uploads on a store without ListParts (s3rver)', () => {
  let plain: TestS3;
  beforeAll(async () => {
    plain = await startS3rver(`${iso.bucket}-plain`);
  });
  afterAll(async () => {
    await plain?.close();
  });

  it('records nothing, and a record found there is dropped with a line saying why', async () => {
    const storage = storageAt(plain, plain.endpoint);
    const store = newStore();
    // A record as another store would have left it.
    await store.begin({
      v: 1,
      bucket: plain.bucket,
      key: 'plain.zip',
      uploadId: 'gone',
      partSize: PART,
      partChecksums: false,
      startedAt: '',
    });
    let writes = 0;
    const counting: ResumeStore = {
      ...store,
      name: store.name,
      load: () => store.load(),
      clear: () => store.clear(),
      begin: async (h) => {
        writes++;
        await store.begin(h);
      },
      addPart: async (p) => {
        writes++;
        await store.addPart(p);
      },
    };
    const { logger, messages } = capturedLogger();
    const src = source(randomBytes(12 * MiB));
    const result = await uploadStream(storage, { key: 'plain.zip', body: src.body, resume: counting, logger });

    expect(result.sha256).toBe(src.sha256);
    expect(await objectSha256(plain, 'plain.zip')).toBe(src.sha256);
    expect(writes).toBe(0);
    expect(messages()).toContain('not resuming the interrupted multipart upload: it is aborted and the upload starts from zero');
    expect(await store.load()).toBeNull();
  });
});
