/**
 * Raw upload of one file: `rclone copyto` with its defaults against Stowage's uploadStream (part
 * size and parts in flight from the config defaults, SHA-256 tap, HEAD check, sidecar), to the same
 * s3rver, same file, in the same run. Each side in its own process; rounds alternate which side
 * goes first and each side's best run counts. Goal: ≥ 1.0× rclone's throughput.
 *
 * s3rver stores on local disk and computes an MD5 per part and again on CompleteMultipartUpload
 * (it concatenates the parts), so on this machine the server, not either client, sets the ceiling.
 *
 *   npx tsx bench/upload.ts [--quick]
 */
import { randomFillSync } from 'node:crypto';
import { open, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startS3 } from '../test/helpers/s3.js';
import { MB, fmtMb, rcloneEnv, runTsChild, stowageEnv, timeCommand, type BenchRow, runIfMain } from './lib.js';

const CHILD = fileURLToPath(new URL('./stowage-child.ts', import.meta.url));

/** A file of `bytes`: random data (nothing here compresses; uploads do not care). */
async function writeFileOf(path: string, bytes: number): Promise<void> {
  const fh = await open(path, 'w');
  try {
    const chunk = Buffer.allocUnsafe(8 * 1024 * 1024);
    for (let done = 0; done < bytes; done += chunk.length) await fh.write(randomFillSync(chunk), 0, Math.min(chunk.length, bytes - done));
  } finally {
    await fh.close();
  }
}

export async function runUploadBench({ quick }: { quick: boolean }): Promise<BenchRow[]> {
  // Quick stays above rclone's upload_cutoff (200 MiB): below it rclone sends one PutObject, which spares
  // s3rver the multipart concatenation and would compare two different server workloads.
  const bytes = (quick ? 224 : 512) * 1024 * 1024;
  const work = await mkdtemp(join(tmpdir(), 'stowage-bench-upload-'));
  const s3 = await startS3('bench-upload');
  try {
    const file = join(work, 'payload.bin');
    await writeFileOf(file, bytes);
    const rounds = quick ? 1 : 2;
    const rclone: { ms: number; maxRssBytes: number }[] = [];
    const ours: { ms: number; maxRssBytes: number }[] = [];
    const runRclone = async (i: number) =>
      rclone.push(await timeCommand('rclone', ['copyto', file, `bench:${s3.bucket}/rclone/payload-${i}.bin`], { env: rcloneEnv(s3) }));
    const runOurs = async (i: number) => ours.push(await runTsChild(CHILD, ['upload', file, `stowage/payload-${i}.bin`], stowageEnv(s3)));
    for (let i = 0; i < rounds; i++) {
      if (i % 2 === 0) {
        await runRclone(i);
        await runOurs(i);
      } else {
        await runOurs(i);
        await runRclone(i);
      }
    }
    const best = (rs: { ms: number }[]) => Math.min(...rs.map((r) => r.ms));
    const peak = (rs: { maxRssBytes: number }[]) => Math.max(...rs.map((r) => r.maxRssBytes));
    const mbps = (ms: number) => bytes / MB / (ms / 1000);
    const ratio = mbps(best(ours)) / mbps(best(rclone));
    return [
      {
        what: `raw upload: one ${bytes / 1024 / 1024} MiB file to s3rver (MB/s)`,
        baseline: `${mbps(best(rclone)).toFixed(0)} MB/s (rclone copyto, defaults; ${(best(rclone) / 1000).toFixed(2)} s)`,
        stowage: `${mbps(best(ours)).toFixed(0)} MB/s (uploadStream; ${(best(ours) / 1000).toFixed(2)} s)`,
        ratio: `${ratio.toFixed(2)}× rclone's throughput`,
        goal: '≥ 1.0×',
        pass: ratio >= 1.0,
        peakRss: `baseline ${fmtMb(peak(rclone))} / stowage ${fmtMb(peak(ours))}`,
        raw: { bytes, rounds, rcloneMs: rclone.map((r) => r.ms), stowageMs: ours.map((r) => r.ms), ratio },
      },
    ];
  } finally {
    await s3.close();
    await rm(work, { recursive: true, force: true });
  }
}

await runIfMain(import.meta.url, (argv) => runUploadBench({ quick: argv.includes('--quick') }));
