/**
 * The aggregation export against real Postgres and s3rver: a seeded data set gives exactly the
 * expected patterns; the key has the documented format and its sha12 is the stored bytes'; with
 * the store unreachable (endpoint on a closed port) the export lands in the fallback directory as
 * fallback_local, and the retry task uploads it once the store is back, marks it uploaded and
 * deletes the file; a file that keeps failing ends `failed`. The queue job runs the same code.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { Queue, type Job } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config.js';
import { getExport } from '../../src/db/failure-exports.js';
import { insertFailures, type NewFailure } from '../../src/db/failures.js';
import { migrate } from '../../src/db/migrate.js';
import { createDb, type Db } from '../../src/db/pool.js';
import { buildExport, retryFallbacks, runAggregation, type AggregationDeps } from '../../src/failures/aggregation.js';
import { normalizeSignature } from '../../src/failures/signature.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics, type Metrics } from '../../src/observability/metrics.js';
import { createProducer } from '../../src/producers/index.js';
import { createRedis } from '../../src/queues/index.js';
import { createStorage, type Storage } from '../../src/storage/client.js';
import { AGGREGATION_KEY_PATTERN } from '../../src/storage/keys.js';
import { aggregation } from '../../src/workers/aggregation.js';
import { startRuntime } from '../../src/workers/runtime.js';
import { isolate } from '../helpers/isolation.js';
import { startS3, type TestS3 } from '../helpers/s3.js';
import { closedPort } from '../http/harness.js';

const iso = isolate('aggregation');
const logger = createLogger({ level: 'silent' });
let s3: TestS3;
let db: Db;
let fallbackDir: string;
let up: Config;
let down: Config;
const storages: Storage[] = [];

const WINDOW_END = new Date('2026-03-10T02:00:00.000Z');
const at = (daysAgo: number, minute = 0) => new Date(WINDOW_END.getTime() - daysAgo * 86_400_000 + minute * 60_000);

function deps(config: Config, metrics: Metrics = createMetrics({ defaults: false })): AggregationDeps {
  return {
    config,
    db,
    logger,
    metrics,
    storage: () => {
      const s = createStorage(config);
      storages.push(s);
      return s;
    },
  };
}

async function objectBytes(key: string): Promise<Buffer> {
  const s = createStorage(up);
  try {
    const out = await s.client.send(new GetObjectCommand({ Bucket: s.bucket, Key: key }));
    return Buffer.from(await out.Body!.transformToByteArray());
  } finally {
    s.close();
  }
}

let n = 0;
const failure = (tenantId: string, errorCode: string, message: string, createdAt: Date): NewFailure => ({
  id: `00000000-0000-4000-8000-${String(++n).padStart(12, '0')}`,
  tenantId,
  errorCode,
  category: 'storage',
  message,
  signature: normalizeSignature(message),
  catalogEntry: null,
  recoveryMode: null,
  recoverySucceeded: null,
  createdAt,
});

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  fallbackDir = await mkdtemp(join(tmpdir(), 'stowage-fallback-'));
  const failures = { localFallbackDir: fallbackDir, maxRetries: 2, retryBaseDelayMs: 10, fallbackMaxTries: 2 };
  const storage = {
    endpoint: s3.endpoint,
    bucket: s3.bucket,
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
    maxAttempts: 1,
  };
  up = iso.config({ storage, failures });
  down = iso.config({ storage: { ...storage, endpoint: `http://127.0.0.1:${await closedPort()}` }, failures });
  await migrate(up);
  db = createDb(up, { max: 4 });
  await insertFailures(db, [
    // 4 × DB_TIMEOUT, two tenants, differing only in numbers: one pattern.
    failure('acme', 'DB_TIMEOUT', 'connection to db-7 timed out after 3000 ms', at(1)),
    failure('acme', 'DB_TIMEOUT', 'connection to db-12 timed out after 5000 ms', at(2)),
    failure('globex', 'DB_TIMEOUT', 'connection to db-3 timed out after 3000 ms', at(3)),
    failure('globex', 'DB_TIMEOUT', 'connection  to db-3 timed out after 10 ms', at(6)),
    // Outside the 7-day window: not counted.
    failure('acme', 'DB_TIMEOUT', 'connection to db-1 timed out after 1 ms', at(8)),
    // 3 × UPLOAD_FAILED with quoted keys, uuids and hex masked: one pattern, one tenant.
    failure('acme', 'UPLOAD_FAILED', `object "a/b.zip" for 1b4e28ba-2fa1-11d2-883f-0016d3cca427 failed: etag 0xdeadbeef`, at(0.5)),
    failure('acme', 'UPLOAD_FAILED', `object "c.zip" for 6fa459ea-ee8a-3ca4-894e-db77e160355e failed: etag 0x1f`, at(0.5, 1)),
    failure('acme', 'UPLOAD_FAILED', `object 'x y.zip' for 16fd2706-8baf-433b-82eb-8c7fada847da failed: etag 0xabc`, at(0.5, 2)),
    // Same text, another code: its own group, below the threshold.
    failure('acme', 'DB_REFUSED', 'connection to db-7 timed out after 3000 ms', at(1)),
    failure('acme', 'DB_REFUSED', 'connection to db-8 timed out after 3000 ms', at(1)),
    // At the window's end: excluded (the window is half-open).
    failure('acme', 'UPLOAD_FAILED', 'object "z.zip" for 16fd2706-8baf-433b-82eb-8c7fada847da failed: etag 0x1', WINDOW_END),
  ]);
});

afterAll(async () => {
  for (const s of storages) s.close();
  await db?.close();
  await s3?.close();
  await rm(fallbackDir, { recursive: true, force: true });
  await iso.cleanup();
});

describe('aggregation export', () => {
  it('groups the seeded failures into exactly the expected patterns', async () => {
    const { doc } = await buildExport(db, { days: 7, minOccurrences: 3, windowEnd: WINDOW_END });
    expect(doc).toEqual({
      generated_at: '2026-03-10T02:00:00.000Z',
      window: { days: 7, start: '2026-03-03T02:00:00.000Z', end: '2026-03-10T02:00:00.000Z', min_occurrences: 3 },
      pattern_count: 2,
      patterns: [
        {
          error_code: 'DB_TIMEOUT',
          signature: 'connection to db-<num> timed out after <num> ms',
          count: 4,
          tenants: ['acme', 'globex'],
          first_seen: at(6).toISOString(),
          last_seen: at(1).toISOString(),
          samples: [
            'connection  to db-3 timed out after 10 ms',
            'connection to db-3 timed out after 3000 ms',
            'connection to db-12 timed out after 5000 ms',
          ],
        },
        {
          error_code: 'UPLOAD_FAILED',
          signature: 'object "<str>" for <id> failed: etag <hex>',
          count: 3,
          tenants: ['acme'],
          first_seen: at(0.5).toISOString(),
          last_seen: at(0.5, 2).toISOString(),
          samples: [
            'object "a/b.zip" for 1b4e28ba-2fa1-11d2-883f-0016d3cca427 failed: etag 0xdeadbeef',
            'object "c.zip" for 6fa459ea-ee8a-3ca4-894e-db77e160355e failed: etag 0x1f',
            "object 'x y.zip' for 16fd2706-8baf-433b-82eb-8c7fada847da failed: etag 0xabc",
          ],
        },
      ],
    });
    // min-occurrences 2 brings the DB_REFUSED group in; deterministic bytes for the same window.
    const two = await buildExport(db, { days: 7, minOccurrences: 2, windowEnd: WINDOW_END });
    expect(two.doc.patterns.map((p) => [p.error_code, p.count])).toEqual([
      ['DB_TIMEOUT', 4],
      ['UPLOAD_FAILED', 3],
      ['DB_REFUSED', 2],
    ]);
    const again = await buildExport(db, { days: 7, minOccurrences: 3, windowEnd: WINDOW_END });
    expect(again.body.equals((await buildExport(db, { days: 7, minOccurrences: 3, windowEnd: WINDOW_END })).body)).toBe(true);
  });

  it("uploads under the documented key, whose sha12 is the stored content's", async () => {
    const metrics = createMetrics({ defaults: false });
    const { summary } = await runAggregation(deps(up, metrics), { days: 7, minOccurrences: 3, windowEnd: WINDOW_END });
    expect(summary.status).toBe('uploaded');
    const m = AGGREGATION_KEY_PATTERN.exec(summary.key);
    expect(m).not.toBeNull();
    expect(summary.key).toMatch(/^failure_patterns\/2026\/03\/10\/candidates_20260310T020000Z_[0-9a-f]{12}\.json$/);
    const bytes = await objectBytes(summary.key);
    const sha = createHash('sha256').update(bytes).digest('hex');
    expect(m![6]).toBe(sha.slice(0, 12));
    expect(sha).toBe(summary.sha256);
    expect(JSON.parse(bytes.toString('utf8')).pattern_count).toBe(2);
    expect((await objectBytes(`${summary.key}.sha256`)).toString()).toBe(`${sha}  ${summary.key.split('/').pop()}\n`);
    const row = await getExport(db, summary.exportId!);
    expect(row).toMatchObject({
      status: 'uploaded',
      s3Key: summary.key,
      sha256: sha,
      sizeBytes: bytes.length,
      retryCount: 0,
      localPath: null,
    });
    expect(row!.uploadedAt).toBeInstanceOf(Date);
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/failure_agg_r2_upload_attempt_total\{status="success"\} 1/);
    expect(text).toMatch(new RegExp(`failure_agg_r2_upload_bytes_total ${bytes.length}`));
  });

  it('falls back to the local directory when the store is unreachable, and the retry task uploads it later', async () => {
    const metrics = createMetrics({ defaults: false });
    const { summary } = await runAggregation(deps(down, metrics), { days: 14, minOccurrences: 2, windowEnd: WINDOW_END });
    expect(summary.status).toBe('fallback_local');
    expect(summary.attempts).toBe(3); // the first try and R2_MAX_RETRIES = 2
    expect(summary.localPath).toBe(join(fallbackDir, summary.key.split('/').pop()!));
    const file = await readFile(summary.localPath!);
    expect(createHash('sha256').update(file).digest('hex')).toBe(summary.sha256);
    const row = await getExport(db, summary.exportId!);
    expect(row).toMatchObject({ status: 'fallback_local', s3Key: summary.key, localPath: summary.localPath, retryCount: 0 });
    expect(row!.notes).toMatch(/after 3 attempt/);
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/failure_agg_r2_upload_fallback_total 1/);
    expect(text).toMatch(/failure_agg_r2_upload_attempt_total\{status="failure"\} 3/);

    // Still down: the retry counts a try and leaves the file.
    const still = await retryFallbacks(deps(down), { max: 10 });
    expect(still.map((o) => [o.id, o.status])).toEqual([[row!.id, 'retrying']]);
    expect(existsSync(summary.localPath!)).toBe(true);

    // A dry run changes nothing.
    const dry = await retryFallbacks(deps(up), { dryRun: true });
    expect(dry.map((o) => o.status)).toEqual(['would-retry']);
    expect((await getExport(db, row!.id))!.status).toBe('retrying');

    // Back: uploaded, marked, file removed.
    const retryMetrics = createMetrics({ defaults: false });
    const done = await retryFallbacks(deps(up, retryMetrics), { max: 10 });
    expect(done.map((o) => [o.id, o.status])).toEqual([[row!.id, 'uploaded']]);
    const after = await getExport(db, row!.id);
    expect(after).toMatchObject({ status: 'uploaded', retryCount: 2, localPath: null });
    expect(after!.lastRetryAt).toBeInstanceOf(Date);
    expect(existsSync(summary.localPath!)).toBe(false);
    expect(
      createHash('sha256')
        .update(await objectBytes(summary.key))
        .digest('hex'),
    ).toBe(summary.sha256);
    expect(await retryMetrics.registry.metrics()).toMatch(/failure_agg_r2_retry_success_total 1/);
    expect(await retryFallbacks(deps(up))).toEqual([]);
  });

  it('marks a fallback failed after AGG_FALLBACK_MAX_TRIES failed re-uploads and keeps the file', async () => {
    const { summary } = await runAggregation(deps(down), { days: 30, minOccurrences: 1, windowEnd: WINDOW_END });
    expect(summary.status).toBe('fallback_local');
    expect((await retryFallbacks(deps(down))).map((o) => o.status)).toEqual(['retrying']);
    expect((await retryFallbacks(deps(down))).map((o) => o.status)).toEqual(['failed']);
    expect(await getExport(db, summary.exportId!)).toMatchObject({ status: 'failed' });
    expect(existsSync(summary.localPath!)).toBe(true);
    expect(await retryFallbacks(deps(up))).toEqual([]);
  });

  it('a job BullMQ retries tries the upload once, not another R2_MAX_RETRIES round, and falls back', async () => {
    const metrics = createMetrics({ defaults: false });
    type Args = Parameters<typeof aggregation>;
    const job = {
      id: 'agg-retried',
      timestamp: Date.now(),
      data: { task: 'aggregate', days: 2, minOccurrences: 1, windowEnd: WINDOW_END.toISOString() },
    };
    const ctx = { ...deps(down, metrics), signal: new AbortController().signal, attempt: 2, emit: async () => {} };
    const result = await aggregation(job as unknown as Args[0], ctx as unknown as Args[1]);
    expect(result).toMatchObject({ status: 'fallback_local', attempts: 1 });
    expect(await metrics.registry.metrics()).toMatch(/failure_agg_r2_upload_attempt_total\{status="failure"\} 1/);
    // Leave no pending fallback for the tests below.
    expect((await retryFallbacks(deps(up))).map((o) => o.status)).toEqual(['uploaded']);
  });

  it('runs as the aggregation job: same window, same key; retry-fallbacks as a task of the same queue', async () => {
    const metrics = createMetrics({ defaults: false });
    const runtime = await startRuntime({
      config: up,
      logger,
      metrics,
      db,
      kinds: ['aggregation'],
      processors: { aggregation },
      maintenance: false,
    });
    const producer = createProducer(up);
    try {
      const { jobId } = await producer.aggregation({ windowEnd: WINDOW_END.toISOString() });
      const result = (await producer.waitFor('aggregation', jobId, 20_000)) as { status: string; key: string; patterns: number };
      const direct = await buildExport(db, { days: 7, minOccurrences: 3, windowEnd: WINDOW_END });
      expect(result).toMatchObject({ status: 'uploaded', patterns: 2 });
      expect(result.key).toMatch(new RegExp(`_${direct.sha256.slice(0, 12)}\\.json$`));
      const retry = await producer.aggregation({ task: 'retry-fallbacks', max: 5 });
      expect(await producer.waitFor('aggregation', retry.jobId, 20_000)).toMatchObject({ task: 'retry-fallbacks', considered: 0 });

      // From a Job Scheduler: the window ends at the job's slot, not when it happened to run.
      const queue = new Queue('aggregation', { connection: createRedis(up.redisUrl), prefix: up.prefix });
      try {
        await queue.upsertJobScheduler('agg-test', { every: 60_000 }, { name: 'aggregation', data: { days: 1, minOccurrences: 1 } });
        let done: Job | undefined;
        const deadline = Date.now() + 15_000;
        while (!done && Date.now() < deadline) {
          done = (await queue.getJobs(['completed'])).find((j) => j.repeatJobKey === 'agg-test');
          if (!done) await new Promise((r) => setTimeout(r, 100));
        }
        const slot = Number(/^repeat:agg-test:(\d+)$/.exec(done!.id!)![1]);
        expect(slot).toBeLessThanOrEqual(done!.processedOn!);
        expect(done!.returnvalue.window.end).toBe(new Date(Math.floor(slot / 1000) * 1000).toISOString());
        await queue.removeJobScheduler('agg-test');
      } finally {
        await queue.close();
        await queue.disconnect();
      }
    } finally {
      await producer.close();
      await runtime.close(2000);
    }
  });
});
