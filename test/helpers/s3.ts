/**
 * The object stores of the tests, each a real S3 server:
 * - `startS3(bucket)`: a new bucket on the run's Ceph radosgw (test/setup/rgw.ts starts it once);
 * - `startS3rver(bucket)`: an s3rver instance in-process, the embedded store of `npm run dev`, for
 *   the storage contract that must hold there too (test/storage/contract.test.ts) and dev mode.
 * `close()` empties and removes the bucket (and stops s3rver), so memstore's RAM is given back.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import {
  AbortMultipartUploadCommand,
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectsCommand,
  ListMultipartUploadsCommand,
  ListObjectVersionsCommand,
  S3Client,
} from '@aws-sdk/client-s3';
// @ts-expect-error s3rver ships no types
import S3rver from 's3rver';
import { inject } from 'vitest';

export type TestS3Kind = 'rgw' | 's3rver';

export interface TestS3 {
  kind: TestS3Kind;
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  /** A plain SDK client of the test's own (not Stowage's), for setting up and reading back. */
  client: S3Client;
  close(): Promise<void>;
}

/** Storage settings for `loadConfig` overrides. */
export function storageConfig(s3: TestS3) {
  return { endpoint: s3.endpoint, bucket: s3.bucket, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey };
}

/** Environment for a CLI or worker process that uses this store. */
export function storageEnv(s3: TestS3): Record<string, string> {
  return { R2_ENDPOINT: s3.endpoint, R2_BUCKET: s3.bucket, R2_ACCESS_KEY_ID: s3.accessKeyId, R2_SECRET_ACCESS_KEY: s3.secretAccessKey };
}

export function clientFor(endpoint: string, accessKeyId: string, secretAccessKey: string, region: string): S3Client {
  return new S3Client({
    region,
    endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId, secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

/** Every object version and incomplete multipart upload, then the bucket. */
export async function emptyAndDelete(client: S3Client, bucket: string): Promise<void> {
  let uploads;
  do {
    uploads = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
    for (const u of uploads.Uploads ?? []) {
      await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: u.Key!, UploadId: u.UploadId! })).catch(() => {});
    }
  } while (uploads.IsTruncated);
  for (;;) {
    const page = await client.send(new ListObjectVersionsCommand({ Bucket: bucket, MaxKeys: 1000 }));
    const objects = [...(page.Versions ?? []), ...(page.DeleteMarkers ?? [])].map((v) => ({ Key: v.Key!, VersionId: v.VersionId }));
    if (!objects.length) break;
    await client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: objects, Quiet: true } }));
  }
  await client.send(new DeleteBucketCommand({ Bucket: bucket }));
}

/** A bucket of its own on the run's radosgw. */
export async function startS3(bucket: string): Promise<TestS3> {
  const rgw = inject('rgw');
  const client = clientFor(rgw.endpoint, rgw.accessKeyId, rgw.secretAccessKey, rgw.region);
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  return {
    kind: 'rgw',
    endpoint: rgw.endpoint,
    bucket,
    accessKeyId: rgw.accessKeyId,
    secretAccessKey: rgw.secretAccessKey,
    region: rgw.region,
    client,
    async close() {
      try {
        await emptyAndDelete(client, bucket);
      } finally {
        client.destroy();
      }
    },
  };
}

/** An s3rver of its own, on a free loopback port, its files in a temp folder. */
export async function startS3rver(bucket: string): Promise<TestS3> {
  const directory = await mkdtemp(join(tmpdir(), 'stowage-s3rver-'));
  const server = new S3rver({ port: 0, address: '127.0.0.1', silent: true, directory, configureBuckets: [{ name: bucket }] });
  const address = (await server.run()) as AddressInfo;
  const endpoint = `http://127.0.0.1:${address.port}`;
  // s3rver's fixed credentials.
  const client = clientFor(endpoint, 'S3RVER', 'S3RVER', 'us-east-1');
  return {
    kind: 's3rver',
    endpoint,
    bucket,
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    region: 'us-east-1',
    client,
    async close() {
      client.destroy();
      await server.close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}

export function startTestS3(kind: TestS3Kind, bucket: string): Promise<TestS3> {
  return kind === 'rgw' ? startS3(bucket) : startS3rver(bucket);
}
