/** Runs the real `stowage` CLI in a child process, isolated to one test file's prefix and schema. */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { DATABASE_URL, REDIS_URL, type Isolation } from './isolation.js';

/** The compiled CLI, as `npx stowage` runs it; test/setup/build.ts builds dist/ for each run. */
export const CLI_MAIN = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
  /** Set when the run was killed, e.g. 'SIGTERM' at the timeout. */
  signal?: string;
}

/**
 * `stowage …args` with a clean environment: PATH, HOME, the test Redis and Postgres, the file's
 * prefix and schema, silent logs, then `env` on top. Never throws: the exit code is in the result.
 * Async on purpose: a blocking spawn would freeze the test process, which may serve an in-process
 * s3rver or a fault proxy the CLI talks to.
 */
export function runCli(iso: Isolation, args: string[], env: Record<string, string> = {}, timeoutMs = 60_000): Promise<CliRun> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI_MAIN, ...args],
      {
        env: {
          PATH: process.env.PATH ?? '',
          HOME: process.env.HOME ?? '/tmp',
          REDIS_URL,
          DATABASE_URL,
          STOWAGE_PREFIX: iso.prefix,
          STOWAGE_DB_SCHEMA: iso.schema,
          LOG_LEVEL: 'silent',
          ...env,
        },
        timeout: timeoutMs,
      },
      (err, stdout, stderr) =>
        resolve({
          code: err ? (typeof err.code === 'number' ? err.code : 1) : 0,
          stdout,
          stderr,
          ...(err?.signal ? { signal: err.signal } : {}),
        }),
    );
  });
}
