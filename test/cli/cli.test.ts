/**
 * The `stowage` command as a user runs it (a separate process), against real Redis and Postgres:
 * help, one-line errors with non-zero exits, enqueue --wait, dlq, events, token.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyToken } from '../../src/auth/tokens.js';
import type { Db } from '../../src/db/pool.js';
import { PermanentError } from '../../src/errors.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { runCli } from '../helpers/cli.js';
import { isolate } from '../helpers/isolation.js';
import { migratedDb, startTestRuntime } from '../helpers/fleet.js';
import { recordsJob, standInResult } from '../helpers/export-data.js';

const iso = isolate('cli');
const SECRET = 'cli-test-secret-cli-test-secret-0123456789';
let db: Db;
let runtime: Runtime;

const stowage = (args: string[], env: Record<string, string> = {}) => runCli(iso, args, env, 30_000);

beforeAll(async () => {
  const config = iso.config();
  db = await migratedDb(config);
  runtime = await startTestRuntime(config, db, ['export'], {
    export: async (job) => {
      const first = recordsJob(job.data).records[0] as { fail?: boolean; n?: number };
      if (first.fail) throw new PermanentError('this record is refused');
      return standInResult(`doubled-${(first.n ?? 0) * 2}`);
    },
  });
});
afterAll(async () => {
  await runtime?.close(2000);
  await db?.close();
  await iso.cleanup();
});

const exportData = (record: Record<string, unknown>) => JSON.stringify({ module: 'cli', userId: 'u1', format: 'json', records: [record] });

describe('stowage CLI', () => {
  it('warns at start-up about a misspelt variable, naming the closest known one, and still runs', async () => {
    const run = await stowage(['config'], { STOWAGE_CONCURENCY: '2', R2_BUKET: 'b-x', STOWAGE_CONCURRENCY: '3' });
    expect(run.code, JSON.stringify(run)).toBe(0);
    expect(run.stderr.split('\n').filter(Boolean)).toEqual([
      'stowage: warning: R2_BUKET is not a Stowage setting and is ignored; did you mean R2_BUCKET?',
      'stowage: warning: STOWAGE_CONCURENCY is not a Stowage setting and is ignored; did you mean STOWAGE_CONCURRENCY?',
    ]);
    // The misspelt one set nothing; the real alias did.
    expect(JSON.parse(run.stdout).worker.concurrency).toBe(3);
    // Source roots opened to everything work, and say what they allow.
    const anywhere = await stowage(['config'], { STOWAGE_SOURCE_ROOTS: '*' });
    expect(anywhere.code, JSON.stringify(anywhere)).toBe(0);
    expect(anywhere.stderr.trim()).toBe('stowage: warning: STOWAGE_SOURCE_ROOTS=* lets whoever may enqueue read any file the workers can');
    expect(JSON.parse(anywhere.stdout).sourceRoots).toEqual(['*']);
  });

  it('prints help for every command', async () => {
    const runs = await Promise.all([
      stowage(['--help']),
      stowage(['worker', '--help']),
      stowage(['dlq', 'redrive', '--help']),
      stowage(['token', 'create', '--help']),
    ]);
    for (const r of runs) expect(r.code).toBe(0);
    expect(runs[0]!.stdout).toMatch(/Commands:[\s\S]*dev[\s\S]*worker[\s\S]*scheduler[\s\S]*enqueue[\s\S]*dlq[\s\S]*events[\s\S]*token/);
    expect(runs[1]!.stdout).toContain('--queues');
    expect(runs[2]!.stdout).toContain('--dry-run');
  });

  it('reports bad input as one line and a non-zero exit', async () => {
    const [unknownKind, badJson, badPayload, badOption, badConfig, noSelector] = await Promise.all([
      stowage(['enqueue', 'zip', '--data', '{}']),
      stowage(['enqueue', 'export', '--data', '{oops']),
      stowage(['enqueue', 'export', '--data', JSON.stringify({ module: '../x', userId: 'u', format: 'csv', records: [{}] })]),
      stowage(['worker', '--concurrency', 'many']),
      stowage(['config'], { REDIS_URL: 'nope', HTTP_PORT: '-1', STOWAGE_AUTH_SECRET: 'hunter2' }),
      stowage(['dlq', 'redrive']),
    ]);
    for (const r of [unknownKind, badJson, badPayload, badOption, badConfig, noSelector]) {
      expect(r.code).not.toBe(0);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^stowage: /);
    }
    expect(unknownKind.stderr).toContain('unknown job kind "zip"');
    expect(badJson.stderr).toContain('--data: not valid JSON');
    expect(badPayload.code).toBe(65);
    expect(badPayload.stderr).toMatch(/module: must not contain \.\..*format/);
    expect(badOption.stderr).toContain('--concurrency: expected a non-negative integer, got "many"');
    expect(badConfig.code).toBe(78);
    for (const name of ['REDIS_URL', 'HTTP_PORT', 'STOWAGE_AUTH_SECRET']) expect(badConfig.stderr).toContain(`${name}:`);
    expect(badConfig.stderr).not.toContain('hunter2');
    expect(noSelector.stderr).toContain('give exactly one of --id, --queue or --all');
  });

  it('enqueue --wait prints the result; a parked job exits 1 with its error', async () => {
    const ok = await stowage(['enqueue', 'export', '--data', exportData({ n: 21 }), '--wait', '--timeout', '20000']);
    // The whole run, so a failure shows the job id and any signal, not only the exit code.
    expect(ok).toMatchObject({ code: 0 });
    expect(JSON.parse(ok.stdout)).toEqual(standInResult('doubled-42'));
    expect(ok.stderr.trim()).toMatch(/^export\.[0-9a-f]{32}$/);

    const bad = await stowage(['enqueue', 'export', '--data', exportData({ fail: true }), '--wait']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('this record is refused');

    const plain = await stowage(['enqueue', 'export', '--data', exportData({ n: 1 })]);
    expect(plain.code).toBe(0);
    expect(plain.stdout.trim()).toMatch(/^export\.[0-9a-f]{32}$/);
  });

  it('lists, redrives (dry run) and purges parked jobs; shows events', async () => {
    await runtime.sweep();
    const list = await stowage(['dlq', 'list', '--json']);
    expect(list.code).toBe(0);
    const parked = JSON.parse(list.stdout) as { id: string; originQueue: string; reason: string; error: { message: string } }[];
    const refused = parked.find((p) => p.error.message.includes('this record is refused'));
    expect(refused).toMatchObject({ originQueue: 'export', reason: 'permanent' });

    const dry = await stowage(['dlq', 'redrive', '--id', refused!.id, '--dry-run']);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toContain('would_redrive\texport');
    const missing = await stowage(['dlq', 'redrive', '--id', 'no-such-job']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('no parked job with id no-such-job');

    const purge = await stowage(['dlq', 'purge', '--queue', 'export']);
    expect(purge.stdout).toContain('1 job(s) purged');
    expect((await stowage(['dlq', 'list'])).stdout).toContain('dead-letter queue is empty');

    const events = await stowage(['events', '--json']);
    const types = events.stdout
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { type: string }).type);
    expect(types).toContain('job_parked');
    // --type filters: no export_completed was emitted here, so nothing is printed.
    const filtered = await stowage(['events', '--json', '--type', 'export_completed,job_redriven']);
    expect(filtered.code).toBe(0);
    expect(filtered.stdout).toBe('');
  });

  it('token create prints a token the server accepts', async () => {
    const r = await stowage(['token', 'create', '--user', 'alice', '--role', 'admin', '--ttl', '2h'], { STOWAGE_AUTH_SECRET: SECRET });
    expect(r.code).toBe(0);
    const principal = await verifyToken(SECRET, r.stdout.trim());
    expect(principal).toMatchObject({ userId: 'alice', tenant: 'alice', role: 'admin' });
    const noSecret = await stowage(['token', 'create', '--user', 'alice']);
    expect(noSecret.code).toBe(78);
    expect(noSecret.stderr).toContain('STOWAGE_AUTH_SECRET is not set');
    const badRole = await stowage(['token', 'create', '--user', 'alice', '--role', 'root'], { STOWAGE_AUTH_SECRET: SECRET });
    expect(badRole.code).not.toBe(0);
    expect(badRole.stderr).toMatch(/root/);
  });
});
