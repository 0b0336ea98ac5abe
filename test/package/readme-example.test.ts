/**
 * The package as an application meets it: `npm pack`, installed into a fresh app folder, and the
 * README's "Using it from a service" code run there as a child process (Node 24 runs the
 * TypeScript as is) against this file's workers, Redis prefix and radosgw bucket. It must print
 * both results and exit on its own (an open Redis socket after close() used to keep it alive).
 * The installed `stowage` command runs too (`--help`).
 */
import { execFile } from 'node:child_process';
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
  await run('npm', ['run', 'build'], { cwd: ROOT });
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
    expect(stored).toMatchObject({ op: 'records', format: 'jsonl', record_count: 1, key: expect.stringMatching(/^finance\/u_123\//) });
  });
});

describe('the installed stowage command', () => {
  const app = () => join(work, 'app');
  const env = () => ({ PATH: process.env.PATH, HOME: process.env.HOME, REDIS_URL, DATABASE_URL, npm_config_yes: 'false' });

  it('npx stowage --help lists the commands', async () => {
    const { stdout } = await run('npx', ['--no-install', 'stowage', '--help'], { cwd: app(), env: env(), timeout: 30_000 });
    for (const cmd of ['dev', 'worker', 'enqueue', 'dlq', 'backup']) expect(stdout).toMatch(new RegExp(`^  ${cmd}\\b`, 'm'));
  });
});
