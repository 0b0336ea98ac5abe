/**
 * uploadStream against real S3 servers: checksums and ETags seen by a second client, the sidecar,
 * multipart, and what a failure mid-upload leaves behind.
 *
 * - radosgw (test/setup/rgw.ts): the store of these tests. What is left on it is read back over
 *   the S3 API (HEAD, GET, ListMultipartUploads). Faults come from the fault-injecting proxy
 *   (test/helpers/s3-proxy.ts), which forwards everything else untouched; tests that need no fault
 *   talk to radosgw directly.
 * - s3rver: only for what a store that refuses AbortMultipartUpload (405) makes of a failure.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import {
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  UploadPartCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { codeOf, isPermanent } from '../../src/errors.js';
import { storeCapabilities } from '../../src/storage/capabilities.js';
import { createStorage, type Storage } from '../../src/storage/client.js';
import { uploadStream } from '../../src/storage/upload.js';
import { isolate } from '../helpers/isolation.js';
import { startS3, startS3rver, type TestS3 } from '../helpers/s3.js';
import { startS3Proxy, type S3Proxy } from '../helpers/s3-proxy.js';

const MiB = 1024 * 1024;
const PART = 5 * MiB;
const storages: Storage[] = [];

function storageAt(iso: ReturnType<typeof isolate>, s3: TestS3, endpoint: string, overrides: Record<string, unknown> = {}): Storage {
  const storage = createStorage(
    iso.config({
      storage: {
        endpoint,
        bucket: s3.bucket,
        accessKeyId: s3.accessKeyId,
        secretAccessKey: s3.secretAccessKey,
        partSizeMb: PART / MiB,
        queueSize: 2,
        ...overrides,
      },
    }),
  );
  storages.push(storage);
  return storage;
}

const md5 = (b: Buffer) => createHash('md5').update(b).digest();

/**
 * `total` random bytes in 1 MiB chunks, produced lazily; `consumed()` says how many were pulled.
 * `multipartEtag` is the S3 ETag of these bytes uploaded in PART-sized parts: the MD5 of the
 * parts' binary MD5s, `-<number of parts>`.
 */
function randomBody(total: number): { body: Readable; sha256: string; multipartEtag: string; consumed: () => number } {
  const seed = randomBytes(MiB);
  const chunk = (i: number) => {
    const c = Buffer.from(seed.subarray(0, Math.min(MiB, total - i * MiB)));
    c.writeUInt32LE(i, 0); // parts differ, so a misordered part would change the hash
    return c;
  };
  const hash = createHash('sha256');
  const partMd5s: Buffer[] = [];
  let part: Buffer[] = [];
  for (let i = 0; i * MiB < total; i++) {
    const c = chunk(i);
    hash.update(c);
    part.push(c);
    if (part.length * MiB === PART || (i + 1) * MiB >= total) {
      partMd5s.push(md5(Buffer.concat(part)));
      part = [];
    }
  }
  const multipartEtag = `"${md5(Buffer.concat(partMd5s)).toString('hex')}-${partMd5s.length}"`;
  let pulled = 0;
  const body = Readable.from(
    (function* () {
      for (let i = 0; i * MiB < total; i++) {
        const c = chunk(i);
        pulled += c.length;
        yield c;
      }
    })(),
    { objectMode: false },
  );
  return { body, sha256: hash.digest('hex'), multipartEtag, consumed: () => pulled };
}

async function fetchObject(s3: TestS3, key: string): Promise<{ sha256: string; size: number; text: string }> {
  const res = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
  const bytes = Buffer.from(await res.Body!.transformToByteArray());
  return { sha256: createHash('sha256').update(bytes).digest('hex'), size: bytes.length, text: bytes.toString('utf8') };
}

async function exists(client: S3Client, bucket: string, key: string): Promise<boolean> {
  try {
    await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return true;
  } catch (err) {
    if ((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return false;
    throw err;
  }
}

afterAll(() => {
  for (const s of storages) s.close();
});

describe('uploadStream on radosgw', () => {
  const iso = isolate('upload');
  let s3: TestS3;
  /** Fault injection only; everything else is radosgw's own answer. */
  let proxy: S3Proxy;

  /** Incomplete multipart uploads under `prefix`, as radosgw lists them. */
  async function openUploads(prefix: string): Promise<{ key: string; uploadId: string }[]> {
    const out: { key: string; uploadId: string }[] = [];
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    for (;;) {
      const page = await s3.client.send(
        new ListMultipartUploadsCommand({ Bucket: s3.bucket, Prefix: prefix, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker }),
      );
      out.push(...(page.Uploads ?? []).map((u) => ({ key: u.Key!, uploadId: u.UploadId! })));
      if (!page.IsTruncated) return out;
      keyMarker = page.NextKeyMarker;
      uploadIdMarker = page.NextUploadIdMarker;
    }
  }

  beforeAll(async () => {
    s3 = await startS3(iso.bucket);
    proxy = await startS3Proxy(s3);
  });

  afterAll(async () => {
    await proxy?.close();
    await s3?.close();
  });

  it('lists an incomplete multipart upload (so the checks below that none is left mean something)', async () => {
    const { UploadId } = await s3.client.send(new CreateMultipartUploadCommand({ Bucket: s3.bucket, Key: 'control/open.bin' }));
    expect(await openUploads('control/')).toEqual([{ key: 'control/open.bin', uploadId: UploadId }]);
    expect(await openUploads('control/other')).toEqual([]);
  });

  it('uploads in equal parts; size, SHA-256 and sidecar match what another client reads', async () => {
    // Through the proxy (no fault) to count the parts.
    const storage = storageAt(iso, s3, proxy.endpoint);
    await storeCapabilities(storage); // the probe's own part is not one of this upload's
    const parts = proxy.stats.partRequests;
    const src = randomBody(12 * MiB + 123); // three parts of 5 MiB, the last one short
    const progress: number[] = [];
    const result = await uploadStream(storage, {
      key: 'u1/p1/snapshots/v1.zip',
      body: src.body,
      contentType: 'application/zip',
      metadata: { 'stowage-kind': 'artifact' },
      onProgress: (n) => progress.push(n),
    });
    expect(result).toEqual({
      key: 'u1/p1/snapshots/v1.zip',
      size: 12 * MiB + 123,
      sha256: src.sha256,
      etag: src.multipartEtag,
      sidecarKey: 'u1/p1/snapshots/v1.zip.sha256',
    });
    expect(proxy.stats.partRequests - parts).toBe(3);

    const fetched = await fetchObject(s3, result.key);
    expect(fetched).toMatchObject({ sha256: src.sha256, size: result.size });
    expect((await fetchObject(s3, 'u1/p1/snapshots/v1.zip.sha256')).text).toBe(`${src.sha256}  v1.zip\n`);
    const head = await s3.client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: result.key }));
    expect(head.ContentType).toBe('application/zip');
    expect(head.ContentLength).toBe(result.size);
    expect(head.Metadata).toMatchObject({ 'stowage-kind': 'artifact', 'sha256-sidecar': 'v1.zip.sha256' });
    expect(progress.at(-1)).toBe(result.size);
    expect(await openUploads('u1/')).toEqual([]);
  });

  it('reads the first parts while the store is probed, not after the probe', async () => {
    // A proxy of its own: a new endpoint, so this storage probes the store afresh.
    const slow = await startS3Proxy(s3);
    const src = randomBody(12 * MiB + 123);
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    // The store answers nothing until the body has given two parts (queueSize) or 10 s have gone.
    const watch = setInterval(() => src.consumed() >= 2 * PART && release(), 5);
    const giveUp = setTimeout(release, 10_000);
    let readBeforeFirstRequest = -1;
    slow.holdRequests(released.then(() => (readBeforeFirstRequest = src.consumed())));
    try {
      const result = await uploadStream(storageAt(iso, s3, slow.endpoint), { key: 'early/probe.zip', body: src.body });
      expect(readBeforeFirstRequest).toBeGreaterThanOrEqual(2 * PART);
      expect(result).toMatchObject({ size: 12 * MiB + 123, sha256: src.sha256, etag: src.multipartEtag });
      expect((await fetchObject(s3, 'early/probe.zip')).sha256).toBe(src.sha256);
    } finally {
      clearInterval(watch);
      clearTimeout(giveUp);
      await slow.close();
    }
  });

  it("reports a multipart object's real ETag, although radosgw's CompleteMultipartUpload answers an empty one", async () => {
    // The quirk, seen with a plain client: the ETag in CompleteMultipartUpload's answer is empty.
    const key = 'etag/plain.bin';
    const { UploadId } = await s3.client.send(new CreateMultipartUploadCommand({ Bucket: s3.bucket, Key: key }));
    const body = randomBytes(1000);
    const part = await s3.client.send(new UploadPartCommand({ Bucket: s3.bucket, Key: key, UploadId, PartNumber: 1, Body: body }));
    const done = await s3.client.send(
      new CompleteMultipartUploadCommand({
        Bucket: s3.bucket,
        Key: key,
        UploadId,
        MultipartUpload: { Parts: [{ PartNumber: 1, ETag: part.ETag }] },
      }),
    );
    const plainEtag = `"${md5(md5(body)).toString('hex')}-1"`;
    expect((await s3.client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key }))).ETag).toBe(plainEtag);
    expect(done.ETag ?? '').toMatch(/^(""|)$/);
    const storage = storageAt(iso, s3, s3.endpoint);
    expect(await storeCapabilities(storage)).toMatchObject({ completeEtag: false });

    // uploadStream's result (what the upload receipt stores) is the stored object's ETag.
    const src = randomBody(11 * MiB);
    const result = await uploadStream(storage, { key: 'etag/multi.zip', body: src.body, sidecar: false });
    const head = await s3.client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: 'etag/multi.zip' }));
    expect(result.etag).toBe(src.multipartEtag);
    expect(result.etag).toMatch(/^"[0-9a-f]{32}-3"$/);
    expect(head.ETag).toBe(result.etag);
    expect(result.sidecarKey).toBeNull();

    // A single PUT: the MD5 of the body.
    const small = await uploadStream(storage, { key: 'etag/small.bin', body: Readable.from([Buffer.from('hello\n')]), sidecar: false });
    expect(small.etag).toBe(`"${md5(Buffer.from('hello\n')).toString('hex')}"`);
    expect((await s3.client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: 'etag/small.bin' }))).ETag).toBe(small.etag);
  });

  it('uploads small and empty bodies with a single PUT', async () => {
    const storage = storageAt(iso, s3, proxy.endpoint);
    await storeCapabilities(storage);
    const parts = proxy.stats.partRequests;
    const small = await uploadStream(storage, { key: 'small.bin', body: Readable.from([Buffer.from('hello\n')]) });
    expect(small).toMatchObject({ size: 6, sha256: createHash('sha256').update('hello\n').digest('hex'), sidecarKey: 'small.bin.sha256' });
    expect((await fetchObject(s3, 'small.bin')).text).toBe('hello\n');
    const empty = await uploadStream(storage, { key: 'empty.bin', body: Readable.from([]), sidecar: false });
    expect(empty).toMatchObject({
      size: 0,
      sha256: createHash('sha256').digest('hex'),
      sidecarKey: null,
      etag: '"d41d8cd98f00b204e9800998ecf8427e"',
    });
    expect(await fetchObject(s3, 'empty.bin')).toMatchObject({ size: 0 });
    expect(await exists(s3.client, s3.bucket, 'empty.bin.sha256')).toBe(false);
    expect(proxy.stats.partRequests - parts).toBe(0);
  });

  it('cuts exact part boundaries from unaligned chunks, reusing part buffers without mixing their bytes', async () => {
    // Part buffers are refilled once the store has a part: a buffer handed back too early would
    // change a later part's bytes, and with it the object's SHA-256 and multipart ETag.
    const storage = storageAt(iso, s3, s3.endpoint);
    const etagOf = (bytes: Buffer) => {
      const parts: Buffer[] = [];
      for (let off = 0; off < bytes.length; off += PART) parts.push(md5(bytes.subarray(off, off + PART)));
      return `"${md5(Buffer.concat(parts)).toString('hex')}-${parts.length}"`;
    };
    for (const size of [PART - 1, PART, PART + 1, 4 * PART, 4 * PART + 7777]) {
      const bytes = randomBytes(size);
      // 7,777-byte chunks, then one chunk larger than a part, then the rest.
      const chunks: (Buffer | string)[] = [];
      let off = 0;
      for (let i = 0; off < size; i++) {
        const n = i === 3 ? PART + 12_345 : 7777;
        chunks.push(bytes.subarray(off, off + n));
        off += n;
      }
      const key = `boundaries/${size}.bin`;
      const result = await uploadStream(storage, { key, body: Readable.from(chunks), sidecar: false });
      expect(result).toMatchObject({ size, sha256: createHash('sha256').update(bytes).digest('hex') });
      expect(await fetchObject(s3, key)).toMatchObject({ size, sha256: result.sha256 });
      // Multipart from PART bytes on (a body of exactly one part is one part, not a PUT).
      if (size >= PART) expect(result.etag).toBe(etagOf(bytes));
    }
    // Strings and plain Uint8Arrays (Readable.from of a string, object-mode streams) are bytes too.
    const mixed = await uploadStream(storage, {
      key: 'boundaries/mixed.txt',
      body: Readable.from(['héllo ', new Uint8Array([0x77, 0x6f]), Buffer.from('rld\n')]),
    });
    expect((await fetchObject(s3, 'boundaries/mixed.txt')).text).toBe('héllo world\n');
    expect(mixed.size).toBe(Buffer.byteLength('héllo world\n'));
    expect(await openUploads('boundaries/')).toEqual([]);
  });

  it('on a store failure mid-upload: stops reading, aborts the multipart upload, and fails retryably', async () => {
    const storage = storageAt(iso, s3, proxy.endpoint, { maxAttempts: 2 });
    await storeCapabilities(storage); // its probe aborts an upload of its own: not counted below
    const src = randomBody(60 * MiB);
    // Only part 2 fails (every attempt is reset after 1 MiB); the other parts would go through.
    proxy.failParts({ fromPart: 2, toPart: 2, afterBytes: MiB });
    const before = { aborts: proxy.stats.abortRequests, resets: proxy.stats.resets };
    try {
      const err = await uploadStream(storage, { key: 'fail/mid.zip', body: src.body }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(Error);
      expect(isPermanent(err)).toBe(false);
      expect(codeOf(err)).toBe('STOWAGE_ERR_STORE');
      expect((err as Error).message).toContain('upload of fail/mid.zip failed');
      expect((err as Error).message).not.toContain('left incomplete');
      // Both attempts at part 2 were cut.
      expect(proxy.stats.resets - before.resets).toBe(2);
      // Fail fast: the other uploader did not go on through the 60 MiB after part 2 had failed.
      expect(src.consumed()).toBeLessThan(40 * MiB);
    } finally {
      proxy.heal();
    }
    // One AbortMultipartUpload, which radosgw carried out: the upload is no longer listed.
    expect(proxy.stats.abortRequests - before.aborts).toBe(1);
    expect(await openUploads('fail/')).toEqual([]);
    expect(await exists(s3.client, s3.bucket, 'fail/mid.zip')).toBe(false);
  });

  it('aborts on the signal: rejects retryably and leaves no multipart upload', async () => {
    const storage = storageAt(iso, s3, s3.endpoint);
    const controller = new AbortController();
    const src = randomBody(40 * MiB);
    const progress: number[] = [];
    const pending = uploadStream(storage, {
      key: 'abort/signal.zip',
      body: src.body,
      signal: controller.signal,
      onProgress: (n) => {
        progress.push(n);
        if (n >= 5 * MiB) controller.abort();
      },
    });
    const err = await pending.then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(Error);
    expect(isPermanent(err)).toBe(false);
    expect((err as Error).message).toContain('aborted');
    expect((err as Error).message).not.toContain('left incomplete');
    expect(progress.length).toBeGreaterThan(0);
    expect(src.consumed()).toBeLessThan(40 * MiB);
    expect(await openUploads('abort/')).toEqual([]);
    expect(await exists(s3.client, s3.bucket, 'abort/signal.zip')).toBe(false);
  });

  it('treats a missing bucket as permanent', async () => {
    const storage = createStorage(
      iso.config({
        storage: {
          endpoint: s3.endpoint,
          bucket: `${iso.bucket}-missing`,
          accessKeyId: s3.accessKeyId,
          secretAccessKey: s3.secretAccessKey,
        },
      }),
    );
    storages.push(storage);
    const err = await uploadStream(storage, { key: 'x.bin', body: Readable.from([Buffer.from('x')]) }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(isPermanent(err)).toBe(true);
    expect((err as Error).message).toContain('NoSuchBucket');
  });
});

describe('uploadStream on a store that refuses AbortMultipartUpload (s3rver: 405)', () => {
  const iso = isolate('uploadnoabort');
  let s3: TestS3;
  let proxy: S3Proxy;

  beforeAll(async () => {
    s3 = await startS3rver(iso.bucket);
    proxy = await startS3Proxy(s3);
  });

  afterAll(async () => {
    await proxy?.close();
    await s3?.close();
  });

  it('reports the upload left incomplete, by id, without hiding the cause', async () => {
    const storage = storageAt(iso, s3, proxy.endpoint, { maxAttempts: 1 });
    await storeCapabilities(storage);
    proxy.failParts({ fromPart: 2, afterBytes: 512 * 1024 });
    const before = proxy.stats.abortRequests;
    let err: unknown;
    try {
      err = await uploadStream(storage, { key: 'fail/plain.zip', body: randomBody(20 * MiB).body }).then(
        () => null,
        (e: unknown) => e,
      );
    } finally {
      proxy.heal();
    }
    expect(err).toBeInstanceOf(Error);
    expect(isPermanent(err)).toBe(false);
    expect(codeOf(err)).toBe('STOWAGE_ERR_STORE');
    // The abort was asked for (and refused by s3rver itself: the proxy forwards it).
    expect(proxy.stats.abortRequests - before).toBe(1);
    const message = (err as Error).message;
    const match = /multipart upload (\S+) is left incomplete \(the store does not implement AbortMultipartUpload\)/.exec(message);
    expect(match, message).not.toBeNull();
    // The cause is the reset part, not s3rver's refusal of the abort.
    expect(message).not.toMatch(/MethodNotAllowed/);
    expect(await exists(s3.client, s3.bucket, 'fail/plain.zip')).toBe(false);

    // The id named is the upload s3rver still holds open (s3rver cannot list uploads): it can be
    // completed, and the object appears under the upload's key. An id it never issued cannot.
    const uploadId = match![1]!;
    const completeWith = async (id: string) => {
      const part = await s3.client.send(
        new UploadPartCommand({
          Bucket: s3.bucket,
          Key: 'fail/plain.zip',
          UploadId: id,
          PartNumber: 10_000,
          Body: Buffer.from('left open\n'),
        }),
      );
      return s3.client.send(
        new CompleteMultipartUploadCommand({
          Bucket: s3.bucket,
          Key: 'fail/plain.zip',
          UploadId: id,
          MultipartUpload: { Parts: [{ PartNumber: 10_000, ETag: part.ETag }] },
        }),
      );
    };
    await expect(completeWith(randomBytes(16).toString('hex'))).rejects.toThrow();
    await completeWith(uploadId);
    expect((await fetchObject(s3, 'fail/plain.zip')).text).toBe('left open\n');
  });
});
