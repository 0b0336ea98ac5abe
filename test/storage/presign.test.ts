/**
 * Presigned download URLs against radosgw, which enforces the signature and the expiry: a URL with
 * a changed signature, key or lifetime gets 403, and so does an expired one.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createStorage, MAX_PRESIGN_SECONDS, type Storage } from '../../src/storage/client.js';
import { attachmentDisposition, presignDownload } from '../../src/storage/presign.js';
import { uploadStream } from '../../src/storage/upload.js';
import { isolate } from '../helpers/isolation.js';
import { startS3, type TestS3 } from '../helpers/s3.js';

const iso = isolate('presign');
let s3: TestS3;
let storage: Storage;
const content = randomBytes(100_000);
const key = 'u1/p1/snapshots/v1.zip';

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  storage = createStorage(
    iso.config({ storage: { endpoint: s3.endpoint, bucket: s3.bucket, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } }),
  );
  await uploadStream(storage, { key, body: Readable.from([content]), contentType: 'application/zip' });
});

afterAll(async () => {
  storage?.close();
  await s3?.close();
});

describe('presignDownload', () => {
  it('returns a URL that downloads the object as an attachment under the given name', async () => {
    const before = Date.now();
    const { url, expiresAt, filename } = await presignDownload(storage, { key, filename: 'Projekt grüße-v1.zip' });
    expect(filename).toBe('Projekt grüße-v1.zip');
    // Default lifetime: 24 h.
    expect(expiresAt.getTime() - before).toBeGreaterThanOrEqual(24 * 3600 * 1000 - 1000);
    expect(expiresAt.getTime() - before).toBeLessThanOrEqual(24 * 3600 * 1000 + 1000);
    expect(new URL(url).searchParams.get('X-Amz-Expires')).toBe('86400');

    const res = await fetch(url);
    expect(res.status).toBe(200);
    const body = Buffer.from(await res.arrayBuffer());
    expect(createHash('sha256').update(body).digest('hex')).toBe(createHash('sha256').update(content).digest('hex'));
    const disposition = res.headers.get('content-disposition') ?? '';
    expect(disposition).toBe(attachmentDisposition('Projekt grüße-v1.zip'));
    expect(disposition).toMatch(/^attachment; filename="Projekt gr__e-v1\.zip"; filename\*=UTF-8''Projekt%20gr%C3%BC%C3%9Fe-v1\.zip$/);
  });

  it('stops working after it expires', async () => {
    // 5 s, so the first fetch is inside the lifetime even on a loaded machine (1 s once lost that race).
    const { url } = await presignDownload(storage, { key, expiresInSeconds: 5 });
    expect((await fetch(url)).status).toBe(200);
    // X-Amz-Date has whole seconds, so the URL is dead at most ~6 s after signing.
    await new Promise((r) => setTimeout(r, 6500));
    const res = await fetch(url);
    expect(res.status).toBe(403);
    // radosgw says AccessDenied with no message; R2 and S3 say "Request has expired".
    expect(await res.text()).toMatch(/<Code>AccessDenied<\/Code>/);
  });

  it('is refused with 403 when its signature, key or lifetime is changed', async () => {
    const { url } = await presignDownload(storage, { key, expiresInSeconds: 600 });
    expect((await fetch(url)).status).toBe(200);
    const tampered = (edit: (u: URL) => void) => {
      const u = new URL(url);
      edit(u);
      return u.toString();
    };
    const signature = new URL(url).searchParams.get('X-Amz-Signature')!;
    const flipped = `${signature.slice(0, -1)}${signature.endsWith('0') ? '1' : '0'}`;
    for (const changed of [
      tampered((u) => u.searchParams.set('X-Amz-Signature', flipped)),
      tampered((u) => u.searchParams.set('X-Amz-Expires', '604800')),
      tampered((u) => u.searchParams.set('response-content-disposition', 'attachment; filename="other.zip"')),
      tampered((u) => (u.pathname = u.pathname.replace('v1.zip', 'v2.zip'))),
    ]) {
      const res = await fetch(changed);
      expect(res.status, changed).toBe(403);
      await res.arrayBuffer();
    }
  });

  it('refuses lifetimes over 7 days, under 1 s, or fractional', async () => {
    for (const expiresInSeconds of [MAX_PRESIGN_SECONDS + 1, 0, -5, 1.5]) {
      await expect(presignDownload(storage, { key, expiresInSeconds })).rejects.toMatchObject({ code: 'STOWAGE_ERR_USAGE' });
    }
    await expect(presignDownload(storage, { key, expiresInSeconds: MAX_PRESIGN_SECONDS })).resolves.toMatchObject({ filename: 'v1.zip' });
  });
});
