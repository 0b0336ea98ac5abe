/**
 * `stowage dev` (what `npm run dev` runs) comes up on a fresh data folder, prints its URLs, and its
 * sample jobs flow: the three builds upload, the one with a missing folder is parked. Ctrl-C
 * (SIGINT) stops it cleanly.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { DATABASE_URL, isolate, REDIS_URL } from '../helpers/isolation.js';

const iso = isolate('dev');
const main = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
let dataDir = '';

afterAll(async () => {
  await iso.cleanup();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('stowage dev', () => {
  it('comes up, runs its sample jobs, and stops on Ctrl-C', async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'stowage-dev-'));
    const child = spawn(process.execPath, ['--import', 'tsx', main, 'dev', '--port', '0', '--s3-port', '0', '--data-dir', dataDir], {
      env: { ...process.env, REDIS_URL, DATABASE_URL, STOWAGE_PREFIX: iso.prefix, STOWAGE_DB_SCHEMA: iso.schema, LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));

    const redis = new Redis(REDIS_URL);
    const builds = new Queue('build-artifact', { connection: redis, prefix: iso.prefix });
    const dlq = new Queue('dead-letter', { connection: redis, prefix: iso.prefix });
    try {
      const deadline = Date.now() + 45_000;
      let completed = 0;
      let parked = 0;
      while (Date.now() < deadline) {
        completed = await builds.getCompletedCount();
        parked = await dlq.getWaitingCount();
        if (completed >= 3 && parked >= 1) break;
        if (child.exitCode !== null) throw new Error(`dev exited early:\n${out}`);
        await new Promise((r) => setTimeout(r, 250));
      }
      expect({ completed, parked }).toEqual({ completed: 3, parked: 1 });
      expect(out).toMatch(/Bull Board +http:\/\/127\.0\.0\.1:\d+\/admin\/queues/);
      const board = /Bull Board +(\S+)/.exec(out)![1]!;
      const page = await fetch(board);
      expect(page.status).toBe(200);
      const results = (await builds.getCompleted()).map((j) => j.returnvalue as { status: string; sha256: string });
      for (const r of results) {
        expect(r.status).toBe('uploaded');
        expect(r.sha256).toMatch(/^[0-9a-f]{64}$/);
      }
      const [parkedJob] = await dlq.getWaiting();
      expect(parkedJob!.data.error.message).toContain('does-not-exist');
    } finally {
      child.kill('SIGINT');
      await builds.close();
      await dlq.close();
      redis.disconnect();
    }
    expect(await exited).toBe(0);
  }, 90_000);
});
