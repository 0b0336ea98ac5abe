/**
 * Raw upload of one file (1 GiB; quick 224 MiB): `rclone copyto` with its defaults, and tuned to
 * Stowage's part size and parts in flight, against Stowage's uploadStream (SHA-256 tap, HEAD
 * check, sidecar), to the same radosgw, same file, in the same run: directly, and through the link
 * shaper (30 ms RTT, 50 MB/s by default; bench/shaper.ts). Each side in its own process; rounds
 * alternate the order and each side's best run counts. Goals, shaped: ≥ 1.3× rclone's defaults,
 * ≥ 1.0× rclone tuned.
 *
 *   npx tsx bench/upload.ts [--quick]
 */
import { randomFillSync } from 'node:crypto';
import { open, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import { ceilingNote, linkFloorMs, startS3, storeLabel, storeModes, type BenchS3 } from './store.js';
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

/** Part size and parts in flight of Stowage's defaults (config storage.partSizeMb, storage.queueSize). */
const PART_MIB = 8;
const IN_FLIGHT = 4;

export async function runUploadBench({ quick }: { quick: boolean }): Promise<BenchRow[]> {
  // Quick stays above rclone's upload_cutoff (200 MiB): below it rclone sends one PutObject, which
  // would compare two different server workloads.
  const bytes = (quick ? 224 : 1024) * 1024 * 1024;
  const work = await mkdtemp(join(tmpdir(), 'stowage-bench-upload-'));
  const rows: BenchRow[] = [];
  try {
    const file = join(work, 'payload.bin');
    await writeFileOf(file, bytes);
    for (const mode of storeModes()) {
      const s3 = await startS3(`bench-upload-${mode}`, { shaped: mode === 'shaped' });
      try {
        rows.push(...(await uploadRows(s3, file, bytes, quick)));
      } finally {
        await s3.close();
      }
    }
    return rows;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

async function uploadRows(s3: BenchS3, file: string, bytes: number, quick: boolean): Promise<BenchRow[]> {
  const rounds = quick ? 1 : 2;
  type Run = { ms: number; maxRssBytes: number };
  const runs: Record<'defaults' | 'tuned' | 'ours', Run[]> = { defaults: [], tuned: [], ours: [] };
  // Each object is deleted after its run (untimed): radosgw's memstore keeps objects in RAM, and
  // six 1 GiB objects at once filled it and stalled the writes of a full run.
  const drop = async <T>(run: Promise<T>, ...keys: string[]): Promise<T> => {
    const out = await run;
    for (const Key of keys) await s3.client.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key }));
    return out;
  };
  const rclone = (args: string[], i: number, name: string) =>
    drop(
      timeCommand('rclone', ['copyto', ...args, file, `bench:${s3.bucket}/rclone/${name}-${i}.bin`], { env: rcloneEnv(s3) }),
      `rclone/${name}-${i}.bin`,
    );
  const sides: Array<[keyof typeof runs, (i: number) => Promise<Run>]> = [
    ['defaults', (i) => rclone([], i, 'defaults')],
    // The same parts in flight and part size as Stowage's defaults.
    ['tuned', (i) => rclone(['--s3-chunk-size', `${PART_MIB}M`, '--s3-upload-concurrency', String(IN_FLIGHT)], i, 'tuned')],
    [
      'ours',
      (i) =>
        drop(
          runTsChild(CHILD, ['upload', file, `stowage/payload-${i}.bin`], stowageEnv(s3)),
          `stowage/payload-${i}.bin`,
          `stowage/payload-${i}.bin.sha256`,
        ),
    ],
  ];
  for (let i = 0; i < rounds; i++) {
    // Each round in another order, so no side always runs on a warmed-up server.
    for (const [name, run] of i % 2 === 0 ? sides : [...sides].reverse()) runs[name].push(await run(i));
  }
  const best = (rs: Run[]) => Math.min(...rs.map((r) => r.ms));
  const peak = (rs: Run[]) => Math.max(...rs.map((r) => r.maxRssBytes));
  const mbps = (ms: number) => bytes / MB / (ms / 1000);
  const ours = mbps(best(runs.ours));
  const where = storeLabel(s3);
  // Shaped, no uploader beats the link's floor (plus a round trip to start), so a ratio over
  // rclone is capped at rclone's time over that floor.
  const floorMs = linkFloorMs(s3, bytes, s3.shaper?.options.rttMs);
  const row = (versus: 'defaults' | 'tuned', goal: number, label: string): BenchRow => {
    const theirs = mbps(best(runs[versus]));
    const ratio = ours / theirs;
    const ceiling = floorMs === null ? null : best(runs[versus]) / floorMs;
    const capped = ceilingNote(
      ceiling,
      `${((floorMs ?? 0) / 1000).toFixed(2)} s at ${((s3.shaper?.options.bytesPerSecond ?? 0) / 1e6).toFixed(0)} MB/s`,
      goal,
    );
    return {
      what: `raw upload: one ${bytes / 1024 / 1024} MiB file, ${where} (MB/s) vs rclone ${label}`,
      baseline: `${theirs.toFixed(0)} MB/s (rclone copyto ${label}; ${(best(runs[versus]) / 1000).toFixed(2)} s)`,
      stowage: `${ours.toFixed(0)} MB/s (uploadStream, ${PART_MIB} MiB parts, ${IN_FLIGHT} in flight; ${(best(runs.ours) / 1000).toFixed(2)} s)`,
      ratio: `${ratio.toFixed(2)}× rclone's throughput${capped}`,
      goal: `≥ ${goal.toFixed(1)}×`,
      pass: ratio >= goal,
      peakRss: `baseline ${fmtMb(peak(runs[versus]))} / stowage ${fmtMb(peak(runs.ours))}`,
      raw: {
        bytes,
        rounds,
        where,
        rcloneMs: runs[versus].map((r) => r.ms),
        stowageMs: runs.ours.map((r) => r.ms),
        ratio,
        floorMs,
        ceiling,
      },
    };
  };
  // The goals of issue 21 are for the shaped store; direct, the server on these two cores sets the ceiling.
  const shaped = s3.shaper !== null;
  return [
    row('defaults', shaped ? 1.3 : 1.0, 'defaults'),
    row('tuned', 1.0, `tuned (--s3-chunk-size ${PART_MIB}M --s3-upload-concurrency ${IN_FLIGHT})`),
  ];
}

await runIfMain(import.meta.url, (argv) => runUploadBench({ quick: argv.includes('--quick') }));
