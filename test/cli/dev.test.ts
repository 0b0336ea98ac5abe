/**
 * `stowage dev` (what `npm run dev` runs) comes up on a fresh data folder, prints its URLs, and its
 * sample jobs flow: the three builds upload, the one with a missing folder is parked. The env block
 * it prints, pasted into another environment, works for the CLI, curl and the SDK. A taken port is
 * one line before anything starts. Ctrl-C (SIGINT) stops it cleanly.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { createProducer } from '../../src/producers/index.js';
import { CLI_MAIN, runCli } from '../helpers/cli.js';
import { DATABASE_URL, isolate, REDIS_URL } from '../helpers/isolation.js';

const iso = isolate('dev');
const dataDirs: string[] = [];

afterAll(async () => {
  await iso.cleanup();
  for (const d of dataDirs) await rm(d, { recursive: true, force: true });
});

interface Dev {
  child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
}

async function startDev(args: string[], env: Record<string, string>): Promise<Dev> {
  const dataDir = await mkdtemp(join(tmpdir(), 'stowage-dev-'));
  dataDirs.push(dataDir);
  const child = spawn(process.execPath, [CLI_MAIN, 'dev', '--data-dir', dataDir, ...args], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, REDIS_URL, DATABASE_URL, LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, output: () => out, exited };
}

async function until(dev: Dev, re: RegExp, ms = 45_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!re.test(dev.output())) {
    if (dev.child.exitCode !== null) throw new Error(`dev exited early:\n${dev.output()}`);
    if (Date.now() > deadline) throw new Error(`no ${re} in:\n${dev.output()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The `export K=V` lines of the banner (values are unquoted here: none needs quoting). */
function envBlock(out: string): Record<string, string> {
  return Object.fromEntries([...out.matchAll(/^export ([A-Z0-9_]+)=(\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
}

describe('stowage dev', () => {
  it('comes up, runs its sample jobs, prints an env block that works elsewhere, and stops on Ctrl-C', async () => {
    const dev = await startDev(['--port', '0', '--s3-port', '0'], {
      STOWAGE_PREFIX: iso.prefix,
      STOWAGE_DB_SCHEMA: iso.schema,
      STOWAGE_AUTH_SECRET: randomBytes(32).toString('hex'),
    });
    const redis = new Redis(REDIS_URL);
    const builds = new Queue('build-artifact', { connection: redis, prefix: iso.prefix });
    const dlq = new Queue('dead-letter', { connection: redis, prefix: iso.prefix });
    try {
      await until(dev, /Ctrl-C stops everything/);
      const deadline = Date.now() + 45_000;
      let completed = 0;
      let parked = 0;
      while (Date.now() < deadline) {
        completed = await builds.getCompletedCount();
        parked = await dlq.getWaitingCount();
        if (completed >= 3 && parked >= 1) break;
        if (dev.child.exitCode !== null) throw new Error(`dev exited early:\n${dev.output()}`);
        await new Promise((r) => setTimeout(r, 250));
      }
      expect({ completed, parked }).toEqual({ completed: 3, parked: 1 });
      const out = dev.output();
      expect(out).toMatch(/Bull Board +http:\/\/127\.0\.0\.1:\d+\/admin\/queues/);
      expect(out).toMatch(/auth +on: STOWAGE_TOKEN/);
      const board = /Bull Board +(\S+)/.exec(out)![1]!;
      expect((await fetch(board)).status).toBe(401);
      const results = (await builds.getCompleted()).map((j) => j.returnvalue as { status: string; sha256: string });
      for (const r of results) {
        expect(r.status).toBe('uploaded');
        expect(r.sha256).toMatch(/^[0-9a-f]{64}$/);
      }
      const [parkedJob] = await dlq.getWaiting();
      expect(parkedJob!.data.error.message).toContain('does-not-exist');

      // The env block, pasted into a shell that has nothing else: the CLI, curl and the SDK reach this fleet.
      const env = envBlock(out);
      expect(Object.keys(env)).toEqual(
        expect.arrayContaining([
          'R2_ENDPOINT',
          'R2_BUCKET',
          'R2_ACCESS_KEY_ID',
          'R2_SECRET_ACCESS_KEY',
          'STOWAGE_DB_SCHEMA',
          'STOWAGE_PREFIX',
          'STOWAGE_TOKEN',
          'STOWAGE_URL',
        ]),
      );
      const list = await runCli(iso, ['dlq', 'list', '--json'], env);
      expect(list.stderr).toBe('');
      expect(list.stdout).toContain('does-not-exist');
      const backups = await runCli(iso, ['backup', 'list', '--json'], env);
      expect(backups.code, backups.stderr).toBe(0);
      const verify = await runCli(iso, ['verify'], env);
      expect(verify.code, verify.stderr).toBe(0);

      const done = (await builds.getCompleted())[0]!;
      const { stdout } = await promisify(execFile)('curl', [
        '-s',
        '-H',
        `authorization: Bearer ${env.STOWAGE_TOKEN}`,
        `${env.STOWAGE_URL}/v1/jobs/build-artifact/${encodeURIComponent(done.id!)}`,
      ]);
      expect(JSON.parse(stdout)).toMatchObject({ state: 'completed', result: { status: 'uploaded' } });

      const sdk = createProducer(loadConfig(env));
      try {
        const dir = join(dataDirs[0]!, 'from-sdk');
        await mkdir(dir, { recursive: true });
        await writeFile(join(dir, 'index.html'), '<h1>from the SDK</h1>');
        const { jobId } = await sdk.buildArtifact({ userId: 'sdk-user', projectId: 'sdk-site', versionId: 'v1', buildDir: dir });
        expect(await sdk.waitFor('build-artifact', jobId, 30_000)).toMatchObject({ status: 'uploaded' });
      } finally {
        await sdk.close();
      }
    } finally {
      dev.child.kill('SIGINT');
      await builds.close();
      await dlq.close();
      redis.disconnect();
    }
    expect(await dev.exited).toBe(0);
  }, 120_000);

  it('says plainly when auth is off, and uses a dev-only prefix by default', async () => {
    const dev = await startDev(['--port', '0', '--s3-port', '0', '--no-samples'], { STOWAGE_DB_SCHEMA: iso.schema });
    try {
      await until(dev, /Ctrl-C stops everything/);
      expect(dev.output()).toMatch(/auth +OFF: the board and the API are open to anyone who can reach 127\.0\.0\.1:\d+/);
      expect(envBlock(dev.output())).toMatchObject({ STOWAGE_PREFIX: 'stowage-dev' });
      expect(envBlock(dev.output())).not.toHaveProperty('STOWAGE_TOKEN');
    } finally {
      dev.child.kill('SIGINT');
    }
    expect(await dev.exited).toBe(0);
  }, 90_000);

  it('a taken port is one line naming the flag, before anything starts', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const port = (taken.address() as { port: number }).port;
    const schema = `${iso.schema}_port`;
    try {
      for (const [flag, args] of [
        ['--port', ['--port', String(port), '--s3-port', '0']],
        ['--s3-port', ['--port', '0', '--s3-port', String(port)]],
      ] as const) {
        const dev = await startDev([...args], { STOWAGE_PREFIX: iso.prefix, STOWAGE_DB_SCHEMA: schema });
        const code = await dev.exited;
        expect(code, dev.output()).toBe(64);
        expect(dev.output().trim().split('\n')).toEqual([
          `stowage: stowage dev: port ${port} on 127.0.0.1 is in use: pass ${flag} with another port (or 0 for any free one)`,
        ]);
      }
      // Nothing started: no migrations ran into the schema.
      const client = new pg.Client({ connectionString: DATABASE_URL });
      await client.connect();
      const { rowCount } = await client.query('select 1 from information_schema.schemata where schema_name = $1', [schema]);
      await client.end();
      expect(rowCount).toBe(0);
    } finally {
      taken.close();
    }
  }, 60_000);
});
