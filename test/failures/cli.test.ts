/**
 * `stowage aggregate` and `stowage retry-fallbacks` run in the CLI's own process with the CLI's
 * configuration (environment variables), against real Postgres and s3rver.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { registerFailureCommands } from '../../src/cli/commands/failures.js';
import { insertFailures } from '../../src/db/failures.js';
import { migrate } from '../../src/db/migrate.js';
import { createDb } from '../../src/db/pool.js';
import { normalizeSignature } from '../../src/failures/signature.js';
import { DATABASE_URL, isolate, REDIS_URL } from '../helpers/isolation.js';
import { startS3, type TestS3 } from '../helpers/s3.js';
import { closedPort } from '../http/harness.js';

const iso = isolate('failurecli');
let s3: TestS3;
let fallbackDir: string;
let deadEndpoint: string;

async function run(...args: string[]): Promise<string> {
  const program = new Command('stowage').exitOverride();
  registerFailureCommands(program);
  const lines: string[] = [];
  const spy = vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => void lines.push(a.join(' ')));
  try {
    await program.parseAsync(args, { from: 'user' });
  } finally {
    spy.mockRestore();
  }
  return lines.join('\n');
}

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  fallbackDir = await mkdtemp(join(tmpdir(), 'stowage-cli-fallback-'));
  deadEndpoint = `http://127.0.0.1:${await closedPort()}`;
  Object.assign(process.env, {
    REDIS_URL,
    DATABASE_URL,
    STOWAGE_PREFIX: iso.prefix,
    STOWAGE_DB_SCHEMA: iso.schema,
    LOG_LEVEL: 'silent',
    R2_ENDPOINT: s3.endpoint,
    R2_BUCKET: s3.bucket,
    R2_ACCESS_KEY_ID: s3.accessKeyId,
    R2_SECRET_ACCESS_KEY: s3.secretAccessKey,
    STOWAGE_S3_MAX_ATTEMPTS: '1',
    R2_MAX_RETRIES: '1',
    AGG_RETRY_BASE_DELAY_MS: '10',
    AGG_LOCAL_FALLBACK: fallbackDir,
    R2_UPLOAD_PREFIX: 'cli/patterns',
  });
  const config = iso.config();
  await migrate(config);
  const db = createDb(config, { max: 1 });
  try {
    const hourAgo = new Date(Date.now() - 3_600_000);
    await insertFailures(
      db,
      ['job 1 failed', 'job 22 failed', 'job 333 failed'].map((message, i) => ({
        id: `00000000-0000-4000-8000-00000000000${i}`,
        tenantId: 'acme',
        errorCode: 'JOB_FAILED',
        category: null,
        message,
        signature: normalizeSignature(message),
        catalogEntry: null,
        recoveryMode: null,
        recoverySucceeded: null,
        createdAt: hourAgo,
      })),
    );
  } finally {
    await db.close();
  }
});

afterAll(async () => {
  await s3?.close();
  await rm(fallbackDir, { recursive: true, force: true });
  await iso.cleanup();
});

describe('stowage aggregate / retry-fallbacks', () => {
  it('--json --skip-r2 prints the export and stores nothing', async () => {
    const doc = JSON.parse(await run('aggregate', '--json', '--skip-r2', '--days', '1'));
    expect(doc.patterns).toEqual([
      expect.objectContaining({ error_code: 'JOB_FAILED', signature: 'job <num> failed', count: 3, tenants: ['acme'] }),
    ]);
    expect(await run('aggregate', '--json', '--skip-r2', '--min-occurrences', '4')).toContain('"pattern_count": 0');
    expect(await readdir(fallbackDir)).toEqual([]);
  });

  it('uploads with the CLI configuration and prints a summary', async () => {
    const out = await run('aggregate');
    expect(out).toMatch(/^1 pattern\(s\) over 7 day\(s\)/);
    expect(out).toMatch(/status: uploaded after 1 attempt/);
    expect(out).toMatch(/key: cli\/patterns\/\d{4}\/\d{2}\/\d{2}\/candidates_\d{8}T\d{6}Z_[0-9a-f]{12}\.json/);
  });

  it('falls back when the store is down; retry-fallbacks uploads once it is back', async () => {
    process.env.R2_ENDPOINT = deadEndpoint;
    const out = await run('aggregate', '--days', '2');
    expect(out).toMatch(/status: fallback_local after 2 attempt/);
    const file = /local file: (.+)$/m.exec(out)![1]!;
    expect(existsSync(file)).toBe(true);
    expect(await run('retry-fallbacks', '--dry-run')).toMatch(/^would-retry cli\/patterns\//);
    process.env.R2_ENDPOINT = s3.endpoint;
    expect(await run('retry-fallbacks', '--max', '5')).toMatch(/^uploaded cli\/patterns\/.* uploaded by retry 1$/);
    expect(existsSync(file)).toBe(false);
    expect(await run('retry-fallbacks')).toBe('no fallback files to retry');
  });
});
