/**
 * The cleanup processor against real services: radosgw (s3rver for a store without
 * ListMultipartUploads), Postgres (this file's schema) and Redis
 * (the domain-event stream). The ProcessorContext is built by hand, as the runtime would.
 */
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listCleanupLogs } from '../../src/db/cleanup-logs.js';
import { isPermanent } from '../../src/errors.js';
import type { CleanupPayload } from '../../src/queues/index.js';
import { sha256SidecarKey } from '../../src/storage/keys.js';
import { cleanup } from '../../src/workers/cleanup.js';
import { processorTestEnv, type ProcessorTestEnv } from '../helpers/fleet.js';
import { isolate } from '../helpers/isolation.js';
import { startS3rver, storageConfig } from '../helpers/s3.js';

const iso = isolate('cleanupjob');
let env: ProcessorTestEnv<'cleanup'>;
const run = (data: CleanupPayload) => env.run(data);
const exists = (key: string) => env.exists(key);

const testKeys = ['t/a.zip', 't/b.zip'];
const realKeys = ['t/c.zip', 'other/d.zip'];

beforeAll(async () => {
  env = await processorTestEnv(iso, 'cleanup', cleanup);
  for (const key of [...testKeys, ...realKeys]) {
    const test = testKeys.includes(key);
    await env.reader.send(
      new PutObjectCommand({
        Bucket: env.s3.bucket,
        Key: key,
        Body: `body of ${key}`,
        ...(test ? { Metadata: { 'stowage-test': 'true' } } : {}),
      }),
    );
    await env.reader.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: sha256SidecarKey(key), Body: `${'a'.repeat(64)}  x\n` }));
  }
});

afterAll(async () => {
  await env?.close();
});

describe('cleanup processor', () => {
  it('a dry run (the payload default) deletes nothing and still records the run', async () => {
    const { result, emitted, jobId } = await run({ testOnly: true, prefix: 't/' });
    expect(result).toMatchObject({ mode: 'objects', scanned: 6, deleted: 4, dryRun: true, errors: 0 });
    for (const key of [...testKeys, ...realKeys]) expect(await exists(key)).toBe(true);
    const [row] = await listCleanupLogs(env.db, 1);
    expect(row).toMatchObject({ mode: 'objects', scanned: 6, deleted: 4, dryRun: true, queue: 'cleanup', jobId, prefix: 't/' });
    expect(emitted.map((e) => [e.type, e.data])).toEqual([
      ['cleanup_completed', { mode: 'objects', scanned: 6, deleted: 4, bytesFreed: row!.bytesFreed, dryRun: true }],
    ]);
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
    const [row] = await listCleanupLogs(env.db, 1);
    expect(row).toMatchObject({
      mode: 'objects',
      scanned: 6,
      deleted: 4,
      bytesFreed: bytes,
      errors: 0,
      dryRun: false,
      queue: 'cleanup',
      jobId,
    });
    expect(row!.finishedAt.getTime()).toBeGreaterThanOrEqual(row!.startedAt.getTime());
    expect(emitted).toHaveLength(1);
    expect(emitted[0]).toMatchObject({
      type: 'cleanup_completed',
      queue: 'cleanup',
      jobId,
      data: { mode: 'objects', scanned: 6, deleted: 4, bytesFreed: bytes, dryRun: false },
    });
  });

  it('enforceLifecycle completes on radosgw with nothing skipped', async () => {
    const { result } = await run({ dryRun: false, enforceLifecycle: true });
    expect(result).toMatchObject({ mode: 'lifecycle', deleted: 0, errors: 0, unsupported: [] });
  });

  it('enforceLifecycle on a store without ListMultipartUploads (s3rver) completes and notes what it skipped', async () => {
    const plain = await startS3rver(`${iso.bucket}-plain`);
    try {
      const { result } = await env.run({ dryRun: false, enforceLifecycle: true }, iso.config({ storage: storageConfig(plain) }));
      expect(result).toMatchObject({ mode: 'lifecycle', deleted: 0, errors: 0, unsupported: ['ListMultipartUploads'] });
      const [row] = await listCleanupLogs(env.db, 1);
      expect(row).toMatchObject({ mode: 'lifecycle', errors: 0, details: { unsupported: ['ListMultipartUploads'] } });
    } finally {
      await plain.close();
    }
  });

  it('refuses a payload that selects nothing, permanently', async () => {
    const err = await run({ dryRun: false }).catch((e: unknown) => e);
    expect(isPermanent(err)).toBe(true);
    expect((err as Error).message).toMatch(/nothing selected/);
  });
});
