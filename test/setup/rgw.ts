/**
 * vitest globalSetup: one throw-away Ceph radosgw (scripts/rgw.sh) for the whole run, on free
 * loopback ports, stopped by pid at the end. Test files get its address through `inject('rgw')`
 * and each makes its own bucket (test/helpers/s3.ts).
 *
 * Lifecycle "days" last RGW_LC_DEBUG_INTERVAL seconds, and the lifecycle thread runs that often,
 * so an expiry rule really fires within a test. Tests that apply a lifecycle rule must use
 * buckets of their own (they do: a bucket per file).
 */
import { execFile } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { freePort } from '../helpers/ports.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { TestProject } from 'vitest/node';

export interface RgwInfo {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  /** For `radosgw-admin` (e.g. `lc process`). */
  cephConf: string;
  /** Seconds per lifecycle day. */
  lcDaySeconds: number;
}

declare module 'vitest' {
  export interface ProvidedContext {
    rgw: RgwInfo;
  }
}

export const LC_DAY_SECONDS = 4;
const run = promisify(execFile);

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const dir = await mkdtemp(join(tmpdir(), 'stowage-rgw-'));
  const script = join(import.meta.dirname, '../../scripts/rgw.sh');
  const started = Date.now();
  const { stdout } = await run('bash', [script, 'start', dir], {
    env: {
      ...process.env,
      RGW_PORT: String(await freePort()),
      MON_PORT: String(await freePort()),
      RGW_LC_DEBUG_INTERVAL: String(LC_DAY_SECONDS),
    },
  }).catch((err: { stderr?: string; message: string }) => {
    throw new Error(`starting radosgw failed: ${err.stderr || err.message}`);
  });
  const vars = Object.fromEntries(
    stdout
      .split('\n')
      .filter((l) => l.includes('='))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
  project.provide('rgw', {
    endpoint: vars.S3_ENDPOINT!,
    accessKeyId: vars.S3_ACCESS_KEY_ID!,
    secretAccessKey: vars.S3_SECRET_ACCESS_KEY!,
    region: vars.S3_REGION!,
    cephConf: vars.CEPH_CONF!,
    lcDaySeconds: LC_DAY_SECONDS,
  });
  console.log(`radosgw at ${vars.S3_ENDPOINT} (started in ${Date.now() - started} ms)`);
  return async () => {
    await run('bash', [script, 'stop', dir]).catch(() => {});
  };
}
