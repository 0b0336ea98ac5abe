/**
 * An independent S3 client, rclone, reads what Stowage wrote to a real S3 server: the bytes of a
 * multipart artifact hash to the SHA-256 Stowage reported, and `sha256sum -c` accepts the sidecar.
 * rclone comes from Debian (.ci/run installs it); AWS_CA_BUNDLE is unset for it because rclone 1.60
 * cannot load the bundle this machine points it at.
 */
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createStorage, type Storage } from '../../src/storage/client.js';
import { sha256SidecarKey } from '../../src/storage/keys.js';
import { uploadStream } from '../../src/storage/upload.js';
import { createZipStream, scanSource } from '../../src/storage/zip.js';
import { isolate } from '../helpers/isolation.js';
import { startS3, type TestS3 } from '../helpers/s3.js';

const iso = isolate('rclone');
let s3: TestS3;
let storage: Storage;
let dir: string;

const execFileAsync = promisify(execFile);

/** Async on purpose: s3rver runs in this process, so a blocking call would deadlock it. */
async function rclone(args: string[]): Promise<void> {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    RCLONE_CONFIG_STORE_TYPE: 's3',
    RCLONE_CONFIG_STORE_PROVIDER: 'Other',
    RCLONE_CONFIG_STORE_ENDPOINT: s3.endpoint,
    RCLONE_CONFIG_STORE_ACCESS_KEY_ID: s3.accessKeyId,
    RCLONE_CONFIG_STORE_SECRET_ACCESS_KEY: s3.secretAccessKey,
    RCLONE_CONFIG_STORE_FORCE_PATH_STYLE: 'true',
    RCLONE_CONFIG_STORE_REGION: 'auto',
  };
  delete env.AWS_CA_BUNDLE;
  await execFileAsync('rclone', args, { env, maxBuffer: 64 * 1024 * 1024, timeout: 60_000 });
}

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  storage = createStorage(
    iso.config({
      storage: {
        endpoint: s3.endpoint,
        bucket: s3.bucket,
        accessKeyId: s3.accessKeyId,
        secretAccessKey: s3.secretAccessKey,
        partSizeMb: 5,
      },
    }),
  );
  dir = await mkdtemp(join(tmpdir(), 'stowage-rclone-'));
  await writeFile(join(dir, 'app.js'), 'export const x = 1;\n'.repeat(50_000));
  await writeFile(join(dir, 'blob.bin'), randomBytes(12 * 1024 * 1024));
});

afterAll(async () => {
  storage?.close();
  await s3?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('rclone reads what Stowage wrote', () => {
  it('gets bytes with the reported SHA-256, and the sidecar verifies them', async () => {
    const key = 'u1/p1/snapshots/v1.zip';
    const result = await uploadStream(storage, { key, body: createZipStream(await scanSource(dir)), contentType: 'application/zip' });
    expect(result.size).toBeGreaterThan(10 * 1024 * 1024); // several 5 MiB parts

    const out = await mkdtemp(join(tmpdir(), 'stowage-rclone-out-'));
    try {
      await rclone(['copyto', `store:${s3.bucket}/${key}`, join(out, 'v1.zip')]);
      await rclone(['copyto', `store:${s3.bucket}/${sha256SidecarKey(key)}`, join(out, 'v1.zip.sha256')]);
      const digest = execFileSync('sha256sum', [join(out, 'v1.zip')])
        .toString()
        .split(' ')[0];
      expect(digest).toBe(result.sha256);
      // The sidecar is in sha256sum's format, naming the file by its base name.
      expect(execFileSync('sha256sum', ['-c', 'v1.zip.sha256'], { cwd: out }).toString()).toContain('v1.zip: OK');
      execFileSync('unzip', ['-tq', join(out, 'v1.zip')]);
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});
