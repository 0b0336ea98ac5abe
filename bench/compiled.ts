/**
 * src/ compiled as the published package ships it, for the rows that judge what a deployed worker
 * costs (CPU per job, peak RSS). Under tsx every closure Stowage makes also calls esbuild's
 * `__name()` helper, which raw BullMQ (plain JavaScript in node_modules) never pays; an installed
 * `stowage` runs dist/.
 *
 * Built once per bench process into a temporary folder (not the repo's dist/, which a test run
 * may be loading), beside links to the repo's node_modules and migrations, and removed at exit.
 */
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp, readFile, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
let built: Promise<string> | undefined;

/** The folder holding the compiled tree (`<dist>/workers/runtime.js`, …); built on first call. */
export function compiledSrc(): Promise<string> {
  built ??= build();
  return built;
}

async function build(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'stowage-bench-dist-'));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  const tsc = join(ROOT, 'node_modules/typescript/bin/tsc');
  const args = ['-p', join(ROOT, 'tsconfig.build.json'), '--outDir', join(dir, 'dist')];
  for (const off of ['--declaration', '--sourceMap', '--declarationMap']) args.push(off, 'false');
  await new Promise<void>((resolve, reject) => {
    const p = spawn(process.execPath, [tsc, ...args], { stdio: 'ignore' });
    p.on('error', reject);
    // Exit code 2 is "emitted, with type errors": another change in progress must not stop the bench.
    p.on('close', (code) => (code === 0 || code === 2 ? resolve() : reject(new Error(`bench: tsc exited ${code}`))));
  });
  // The package's other shipped folder: dist/db/migrate.js finds migrations/ beside dist/.
  for (const shared of ['node_modules', 'migrations']) await symlink(join(ROOT, shared), join(dir, shared));
  // src/version.ts reads the version from the package.json above dist/.
  const { version } = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  await writeFile(join(dir, 'package.json'), `${JSON.stringify({ type: 'module', version })}\n`);
  return join(dir, 'dist');
}

/**
 * The Stowage modules the CPU rows run, from `dir`: a compiled tree (compiledSrc()) or '../src'
 * (tsx), with src's types either way.
 */
export async function stowageModules(dir: string) {
  return {
    ...((await import(`${dir}/config.js`)) as typeof import('../src/config.js')),
    ...((await import(`${dir}/db/migrate.js`)) as typeof import('../src/db/migrate.js')),
    ...((await import(`${dir}/db/pool.js`)) as typeof import('../src/db/pool.js')),
    ...((await import(`${dir}/observability/logger.js`)) as typeof import('../src/observability/logger.js')),
    ...((await import(`${dir}/observability/metrics.js`)) as typeof import('../src/observability/metrics.js')),
    ...((await import(`${dir}/workers/runtime.js`)) as typeof import('../src/workers/runtime.js')),
  };
}
