/**
 * The benchmarks' S3 server: one throw-away Ceph radosgw per bench process (scripts/rgw.sh, the
 * same real server the tests use), stopped when the process exits. `startS3` gives a bucket of
 * its own on it, reached directly or, with `shaped`, through the link shaper (bench/shaper.ts:
 * BENCH_RTT_MS, BENCH_BANDWIDTH_MBPS), so every row that touches the store can run both ways.
 */
import { execFile, spawnSync } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { freePort } from '../test/helpers/ports.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { clientFor, emptyAndDelete, type TestS3 } from '../test/helpers/s3.js';
import { startShaper, type Shaper } from './shaper.js';

const SCRIPT = fileURLToPath(new URL('../scripts/rgw.sh', import.meta.url));

interface Rgw {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
}

let rgw: Promise<Rgw> | null = null;

/** The process's radosgw, started on first use. */
export function benchRgw(): Promise<Rgw> {
  rgw ??= (async () => {
    const dir = await mkdtemp(join(tmpdir(), 'stowage-bench-rgw-'));
    const { stdout } = await promisify(execFile)('bash', [SCRIPT, 'start', dir], {
      env: { ...process.env, RGW_PORT: String(await freePort()), MON_PORT: String(await freePort()) },
    });
    // Synchronous on purpose: 'exit' handlers cannot wait.
    process.on('exit', () => spawnSync('bash', [SCRIPT, 'stop', dir]));
    // A bench stopped with Ctrl-C or kill still stops its cluster ('exit' does not run on a signal).
    for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));
    const vars = Object.fromEntries(
      stdout
        .split('\n')
        .filter((l) => l.includes('='))
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    process.stderr.write(`bench: radosgw at ${vars.S3_ENDPOINT}\n`);
    return {
      endpoint: vars.S3_ENDPOINT!,
      accessKeyId: vars.S3_ACCESS_KEY_ID!,
      secretAccessKey: vars.S3_SECRET_ACCESS_KEY!,
      region: vars.S3_REGION!,
    };
  })();
  return rgw;
}

export interface BenchS3 extends TestS3 {
  /** The shaper in front of the server, when shaped. */
  shaper: Shaper | null;
  /** The server itself, for a bench's setup (seeding) that is not measured. */
  directEndpoint: string;
}

/** A bucket of its own on the bench radosgw; `shaped`: its endpoint is the link shaper's. */
export async function startS3(bucket: string, options: { shaped?: boolean } = {}): Promise<BenchS3> {
  const server = await benchRgw();
  const direct = clientFor(server.endpoint, server.accessKeyId, server.secretAccessKey, server.region);
  await direct.send(new CreateBucketCommand({ Bucket: bucket }));
  const shaper = options.shaped ? await startShaper({ port: Number(new URL(server.endpoint).port) }) : null;
  const endpoint = shaper ? shaper.url : server.endpoint;
  return {
    kind: 'rgw',
    endpoint,
    bucket,
    accessKeyId: server.accessKeyId,
    secretAccessKey: server.secretAccessKey,
    region: server.region,
    // The bench's own setup and checks go direct; what is measured uses `endpoint`.
    client: direct,
    shaper,
    directEndpoint: server.endpoint,
    async close() {
      try {
        await emptyAndDelete(direct, bucket);
      } finally {
        direct.destroy();
        await shaper?.close();
      }
    },
  };
}

/** `direct` and, unless BENCH_SHAPED=0, `shaped`: the ways each store row runs. */
export function storeModes(): Array<'direct' | 'shaped'> {
  return process.env.BENCH_SHAPED === '0' ? ['direct'] : ['direct', 'shaped'];
}

/** A row label's suffix for a store mode, e.g. `(shaped: 30 ms RTT, 50 MB/s)`. */
export function storeLabel(s3: BenchS3): string {
  return s3.shaper
    ? `radosgw shaped: ${s3.shaper.options.rttMs} ms RTT, ${(s3.shaper.options.bytesPerSecond / 1e6).toFixed(0)} MB/s`
    : 'radosgw direct';
}

/**
 * Shaped, every connection shares one link: nothing moves `bytes` over it faster than bytes ÷
 * bandwidth (plus `extraMs`). That floor in ms, or null for the direct store.
 */
export function linkFloorMs(s3: BenchS3, bytes: number, extraMs = 0): number | null {
  return s3.shaper ? (bytes / s3.shaper.options.bytesPerSecond) * 1000 + extraMs : null;
}

/** A ratio row's note on the best ratio the link allows (`ceiling`), saying when that is under the goal; '' direct. */
export function ceilingNote(ceiling: number | null, detail: string, goal: number): string {
  if (ceiling === null) return '';
  return ` (the link's ceiling: ${ceiling.toFixed(2)}×, ${detail}${ceiling < goal ? ', below the goal' : ''})`;
}
