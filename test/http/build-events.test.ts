/**
 * A build-artifact job followed live over SSE: its progress (archiving, uploading), then its
 * artifact_uploaded event, then completed, in that order. Real radosgw, Redis, Postgres, runtime.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { migrate } from '../../src/db/migrate.js';
import { startServer, type RunningServer } from '../../src/http/server.js';
import { createLogger } from '../../src/observability/logger.js';
import { PROCESSORS } from '../../src/workers/processors.js';
import { startRuntime, type Runtime } from '../../src/workers/runtime.js';
import { isolate } from '../helpers/isolation.js';
import { harness, type Harness } from './harness.js';
import { sseClient } from './sse-client.js';

const iso = isolate('buildsse');
let h: Harness;
let server: RunningServer;
let runtime: Runtime;
let dir: string;

beforeAll(async () => {
  h = await harness(iso, { s3: true, config: { http: { port: 0 } } });
  await migrate(h.deps.config);
  server = await startServer(h.deps);
  runtime = await startRuntime({
    config: h.deps.config,
    logger: createLogger({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
    metrics: h.deps.metrics,
    db: h.deps.db,
    kinds: ['build-artifact'],
    processors: PROCESSORS,
  });
  dir = await mkdtemp(join(tmpdir(), 'stowage-buildsse-'));
  // Large enough for several multipart parts, so uploading reports progress more than once.
  await writeFile(join(dir, 'bundle.bin'), randomBytes(16 * 1024 * 1024));
  await writeFile(join(dir, 'index.html'), '<h1>live</h1>\n'.repeat(1000));
});

afterAll(async () => {
  await server?.close();
  await runtime?.close(2000);
  await h?.close();
  await rm(dir, { recursive: true, force: true });
  await iso.cleanup();
});

describe('build-artifact over SSE', () => {
  it('streams progress, then artifact_uploaded, then completed', async () => {
    const token = await createToken(h.secret, { user: 'alice', role: 'viewer' });
    // Delayed, so the client is subscribed before the first byte is archived.
    const { jobId } = await h.deps.producer.buildArtifact(
      { userId: 'alice', projectId: 'site', versionId: 'live-1', buildDir: dir },
      { delay: 1500 },
    );
    const client = await sseClient(server.url, `/v1/jobs/build-artifact/${jobId}/events`, { authorization: `Bearer ${token}` });
    try {
      await client.until(() => client.events.some((e) => e.event === 'completed' || e.event === 'failed'), 'the end', 30_000);
      expect(client.events.find((e) => e.event === 'failed')?.data).toBeUndefined();
      const names = client.events.map((e) => e.event);
      const progress = client.events
        .filter((e) => e.event === 'progress')
        .map((e) => (e.data as { progress: { stage: string; bytes: number } }).progress);
      expect(progress.some((p) => p.stage === 'archiving')).toBe(true);
      expect(progress.some((p) => p.stage === 'uploading')).toBe(true);
      const uploaded = names.indexOf('artifact_uploaded');
      expect(uploaded).toBeGreaterThan(-1);
      const lastProgress = names.lastIndexOf('progress');
      const completed = names.indexOf('completed');
      expect(lastProgress).toBeLessThan(uploaded);
      expect(uploaded).toBeLessThan(completed);
      const result = (client.events[completed]!.data as { result?: { sha256?: string } }).result;
      expect(result?.sha256).toMatch(/^[0-9a-f]{64}$/);
      expect((client.events[uploaded]!.data as { data: { sha256: string } }).data.sha256).toBe(result?.sha256);
      // The server ends a job's stream after its final event.
      await client.finished();
    } finally {
      if (!client.ended) await client.close();
    }
  });
});
