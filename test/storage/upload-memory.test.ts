/**
 * Memory stays bounded by part size × parts in flight, not by artifact size: a ~300 MB folder is
 * archived and uploaded by a child process whose peak RSS must stay under 250 MiB. What makes up
 * the ~210 MiB measured: ~100 MiB is node + tsx + the AWS SDK before any work (an empty folder),
 * ~50 MiB the parts in flight at the default 8 MiB × 4, the rest Buffers V8 has not collected yet.
 * (Peak RSS was flat from 100 MB to 600 MB of input when measured.)
 */
import { execFile } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isolate } from '../helpers/isolation.js';
import { startS3, storageEnv, type TestS3 } from '../helpers/s3.js';

const iso = isolate('memory');
const child = fileURLToPath(new URL('./pipeline-child.ts', import.meta.url));
const MiB = 1024 * 1024;
let s3: TestS3;
let work: string;

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  work = await mkdtemp(join(tmpdir(), 'stowage-memory-'));
  const src = join(work, 'build');
  await mkdir(join(src, 'assets'), { recursive: true });
  const block = Buffer.allocUnsafe(50 * MiB);
  // 280 MB of incompressible data in large files (stored, streamed) …
  for (let i = 0; i < 5; i++) {
    randomFillSync(block);
    await writeFile(join(src, 'assets', `blob-${i}.bin`), i < 4 ? block : block.subarray(0, 30 * MiB));
  }
  // … and 20 MB of text in 200 small files (read ahead, deflated on the thread pool).
  const text = Buffer.from(Array.from({ length: 2000 }, (_, i) => `export const v${i} = ${i * 7} + x${i % 13};\n`).join(''));
  for (let i = 0; i < 200; i++)
    await writeFile(join(src, `m${i}.js`), Buffer.concat(Array(Math.ceil(100_000 / text.length)).fill(text)).subarray(0, 100_000));
});

afterAll(async () => {
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('memory', () => {
  it('uploads a ~300 MB artifact with peak RSS under 250 MB, and the stored bytes hash to the reported SHA-256', {
    timeout: 120_000,
  }, async () => {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['--import', 'tsx', child, join(work, 'build'), 'mem/snapshots/v1.zip'],
      {
        env: {
          ...process.env,
          // The child cannot inject(): it gets the radosgw bucket through the production env vars.
          ...storageEnv(s3),
          STOWAGE_PART_SIZE_MB: '8',
          STOWAGE_UPLOAD_QUEUE_SIZE: '4',
          LOG_LEVEL: 'silent',
        },
        maxBuffer: 1 << 20,
      },
    );
    const result = JSON.parse(stdout.trim().split('\n').at(-1)!) as {
      size: number;
      sha256: string;
      etag: string | null;
      sourceBytes: number;
      maxRssBytes: number;
      ms: number;
    };
    expect(result.sourceBytes).toBe(230 * MiB + 20_000_000);
    expect(result.size).toBeGreaterThan(230 * MiB);
    expect(result.maxRssBytes).toBeLessThan(250 * MiB);
    console.info(
      `300 MB pipeline: ${result.ms} ms, peak RSS ${(result.maxRssBytes / MiB).toFixed(0)} MiB, artifact ${(result.size / MiB).toFixed(0)} MiB`,
    );

    // Read back with the test's own client, straight from radosgw.
    const res = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: 'mem/snapshots/v1.zip' }));
    const hash = createHash('sha256');
    let size = 0;
    for await (const chunk of res.Body as AsyncIterable<Buffer>) {
      hash.update(chunk);
      size += chunk.length;
    }
    expect(size).toBe(result.size);
    expect(hash.digest('hex')).toBe(result.sha256);
    // radosgw's CompleteMultipartUpload answers an empty ETag: the result carries HEAD's.
    expect(result.etag).toMatch(new RegExp(`^"[0-9a-f]{32}-${Math.ceil(result.size / (8 * MiB))}"$`));
    expect(res.ETag).toBe(result.etag);
  });
});
