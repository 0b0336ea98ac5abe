/**
 * The package as an application meets it: `npm pack`, installed into a fresh app folder, and the
 * README's "Using it from a service" code run there as a child process (Node 24 runs the
 * TypeScript as is) against this file's workers, Redis prefix and radosgw bucket. It must print
 * both results and exit on its own (an open Redis socket after close() used to keep it alive).
 * The installed `stowage` command runs too: `--help`, and `dev --no-samples` (its embedded store, s3rver,
 * must come with the install) until Ctrl-C.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Db } from '../../src/db/pool.js';
import { PROCESSORS } from '../../src/workers/processors.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { migratedDb, startTestRuntime } from '../helpers/fleet.js';
import { DATABASE_URL, isolate, REDIS_URL } from '../helpers/isolation.js';
import { startS3, storageConfig, type TestS3 } from '../helpers/s3.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const iso = isolate('package');
let work: string;
let s3: TestS3;
let db: Db;
let runtime: Runtime;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'stowage-package-'));
  // dist/ is this run's build (test/setup/build.ts); building again here would rewrite files
  // other test files' CLIs are loading.
  const { stdout } = await run('npm', ['pack', '--silent', '--pack-destination', work], { cwd: ROOT });
  const tarball = join(work, stdout.trim().split('\n').at(-1)!);
  const app = join(work, 'app');
  await mkdir(app);
  await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  await run('npm', ['install', '--no-audit', '--no-fund', tarball], { cwd: app, maxBuffer: 16 << 20 });

  s3 = await startS3(iso.bucket);
  const config = iso.config({ storage: storageConfig(s3) });
  db = await migratedDb(config);
  runtime = await startTestRuntime(config, db, ['build-artifact', 'export'], PROCESSORS);
}, 300_000);

afterAll(async () => {
  await runtime?.close(2000);
  await db?.close();
  await s3?.close();
  await iso.cleanup();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('the README example, from the packed package', () => {
  it('enqueues a build, waits for it, stores records, prints both results and exits on its own', async () => {
    const readme = await readFile(join(ROOT, 'README.md'), 'utf8');
    const code = /## Using it from a service\n\n```ts\n([\s\S]*?)```/.exec(readme)![1]!;
    expect(code).toContain("from 'stowage'");
    const buildDir = join(work, 'build', 'v_42');
    await mkdir(buildDir, { recursive: true });
    await writeFile(join(buildDir, 'index.html'), '<h1>v42</h1>\n');
    // The README's code with this test's build folder and prefix; `records` is the app's own data.
    const example = [
      "const records = [{ amount: 3, memo: 'lunch' }];",
      code.replace('/srv/builds/v_42', buildDir).replace("prefix: 'stowage'", `prefix: '${iso.prefix}'`),
      'console.log(JSON.stringify({ result, stored }));',
    ].join('\n');
    expect(example).toContain(buildDir);
    expect(example).toContain(iso.prefix);
    await writeFile(join(work, 'app', 'example.ts'), example);

    const { stdout } = await run(process.execPath, ['example.ts'], {
      cwd: join(work, 'app'),
      env: { PATH: process.env.PATH, HOME: process.env.HOME, REDIS_URL },
      // A hang (the process not exiting after close()) fails here.
      timeout: 30_000,
    });
    const { result, stored } = JSON.parse(stdout.trim().split('\n').at(-1)!);
    expect(result).toMatchObject({
      status: 'uploaded',
      key: 'u_123/p_9/snapshots/v_42.zip',
      sha256: expect.stringMatching(/^[0-9a-f]{64}$/),
    });
    expect(stored).toMatchObject({
      op: 'records',
      format: 'jsonl',
      record_count: 1,
      key: expect.stringMatching(/^records\/finance\/u_123\//),
    });
  });
});

describe('the installed stowage command', () => {
  const app = () => join(work, 'app');
  const env = () => ({ PATH: process.env.PATH, HOME: process.env.HOME, REDIS_URL, DATABASE_URL, npm_config_yes: 'false' });

  it('npx stowage --help lists the commands', async () => {
    const { stdout } = await run('npx', ['--no-install', 'stowage', '--help'], { cwd: app(), env: env(), timeout: 30_000 });
    for (const cmd of ['dev', 'worker', 'enqueue', 'dlq', 'backup']) expect(stdout).toMatch(new RegExp(`^  ${cmd}\\b`, 'm'));
  });

  it('npx stowage dev --no-samples comes up, serves its board, and stops on Ctrl-C', async () => {
    const dataDir = join(work, 'dev-data');
    // detached: its own process group, so the SIGINT below reaches npx and the node it starts alike,
    // as a terminal's Ctrl-C does (npx alone does not pass it on).
    const child = spawn('npx', ['--no-install', 'stowage', 'dev', '--no-samples', '--port', '0', '--s3-port', '0', '--data-dir', dataDir], {
      cwd: app(),
      env: { ...env(), STOWAGE_PREFIX: iso.prefix, STOWAGE_DB_SCHEMA: iso.schema, LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    let board = '';
    try {
      const deadline = Date.now() + 60_000;
      while (!/Ctrl-C stops everything/.test(out)) {
        if (child.exitCode !== null) throw new Error(`dev exited early:\n${out}`);
        if (Date.now() > deadline) throw new Error(`dev did not come up:\n${out}`);
        await new Promise((r) => setTimeout(r, 200));
      }
      board = /Bull Board +(\S+)/.exec(out)![1]!;
      expect((await fetch(board)).status, out).toBe(200);
      const store = /^export R2_ENDPOINT=(\S+)$/m.exec(out)![1]!;
      expect((await fetch(store)).status, out).toBeLessThan(500);
    } finally {
      process.kill(-child.pid!, 'SIGINT');
    }
    const ended = await Promise.race([exited, new Promise<'still running'>((r) => setTimeout(() => r('still running'), 30_000))]);
    if (ended === 'still running') process.kill(-child.pid!, 'SIGKILL');
    // npx itself dies of the SIGINT (as in a terminal); the stowage process under it must exit
    // cleanly: no error printed, the whole process group gone, the port closed.
    expect(ended === 'still running' ? ended : ended.code === 0 || ended.signal === 'SIGINT', out).toBe(true);
    const groupAlive = async () => {
      for (let i = 0; i < 100; i++) {
        try {
          process.kill(-child.pid!, 0);
        } catch {
          return false;
        }
        await new Promise((r) => setTimeout(r, 200));
      }
      return true;
    };
    expect(await groupAlive(), out).toBe(false);
    expect(out).not.toMatch(/Error|unhandled/i);
    await expect(fetch(board)).rejects.toThrow();
  }, 120_000);
});
