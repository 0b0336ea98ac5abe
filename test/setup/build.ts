/**
 * vitest globalSetup: compile src/ to dist/ once per run, as `npm pack` ships it. Tests run the
 * `stowage` CLI from dist/ (test/helpers/cli.ts), the way a user's `npx stowage` does, and the
 * package test packs this same build. Compiled, a CLI start costs about a third of a tsx start,
 * which matters when a dozen test files spawn CLIs at once on two cores.
 */
import { execFile } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const ROOT = join(import.meta.dirname, '../..');

export default async function setup(): Promise<void> {
  const started = Date.now();
  // From empty, so a file removed from src/ is not shipped from an old build.
  await rm(join(ROOT, 'dist'), { recursive: true, force: true });
  const tsc = join(ROOT, 'node_modules/typescript/bin/tsc');
  await promisify(execFile)(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { cwd: ROOT }).catch(
    (err: { stdout?: string; message: string }) => {
      throw new Error(`building dist/ for the CLI tests failed:\n${err.stdout || err.message}`);
    },
  );
  console.log(`dist/ built in ${Date.now() - started} ms`);
}
