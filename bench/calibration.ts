/**
 * Calibration of the link shaper (bench/shaper.ts): what a small PUT costs through it against
 * directly. Two clients, 40 objects of 1 KiB each, one at a time on a kept-alive connection:
 * - the AWS SDK's PutObject, one request per object: the difference per object must be the set
 *   round-trip time (BENCH_RTT_MS, default 30), within ±30%;
 * - `rclone copy` (one transfer, no destination checks), an independent client: its difference
 *   divided by the RTT is how many round trips rclone spends per small object (measured here: ~2-3,
 *   as it also reads the object back). Reported, no goal.
 *
 *   npx tsx bench/calibration.ts
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rcloneEnv, runIfMain, timeCommand, type BenchRow } from './lib.js';
import { startS3, storeLabel } from './store.js';

const FILES = 40;

export async function runCalibrationBench(): Promise<BenchRow[]> {
  const dir = await mkdtemp(join(tmpdir(), 'stowage-bench-calibration-'));
  try {
    for (let i = 0; i < FILES; i++) await writeFile(join(dir, `small-${i}.txt`), Buffer.alloc(1024, 65 + (i % 26)));
    const perObject: Record<string, number> = {};
    const sdkPerObject: Record<string, number> = {};
    const labels: Record<string, string> = {};
    for (const mode of ['direct', 'shaped'] as const) {
      const s3 = await startS3(`bench-calibration-${mode}`, { shaped: mode === 'shaped' });
      try {
        const args = ['copy', dir, `bench:${s3.bucket}/cal`, '--transfers', '1', '--checkers', '1', '--no-check-dest', '--no-traverse'];
        // Once untimed (rclone's start-up, the first connection), then the measured run.
        await timeCommand('rclone', [...args.slice(0, 2), `bench:${s3.bucket}/warm`, ...args.slice(3)], { env: rcloneEnv(s3) });
        const run = await timeCommand('rclone', args, { env: rcloneEnv(s3) });
        perObject[mode] = run.ms / FILES;
        labels[mode] = storeLabel(s3);
        const sdk = new S3Client({
          region: s3.region,
          endpoint: s3.endpoint,
          forcePathStyle: true,
          credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
          requestChecksumCalculation: 'WHEN_REQUIRED',
        });
        try {
          await sdk.send(new PutObjectCommand({ Bucket: s3.bucket, Key: 'sdk/warm', Body: 'x' }));
          const started = performance.now();
          for (let i = 0; i < FILES; i++)
            await sdk.send(new PutObjectCommand({ Bucket: s3.bucket, Key: `sdk/${i}`, Body: Buffer.alloc(1024, 65) }));
          sdkPerObject[mode] = (performance.now() - started) / FILES;
        } finally {
          sdk.destroy();
        }
      } finally {
        await s3.close();
      }
    }
    const rtt = Number(process.env.BENCH_RTT_MS ?? 30);
    const added = perObject.shaped! - perObject.direct!;
    const sdkAdded = sdkPerObject.shaped! - sdkPerObject.direct!;
    return [
      {
        what: `calibration: AWS SDK PutObject of 1 KiB, ${labels.shaped} (ms per object)`,
        baseline: `${sdkPerObject.direct!.toFixed(1)} ms (${labels.direct})`,
        stowage: `${sdkPerObject.shaped!.toFixed(1)} ms (shaped)`,
        ratio: `+${sdkAdded.toFixed(1)} ms per PUT through the shaper`,
        goal: `+${rtt} ms (one round trip) ± 30%`,
        pass: sdkAdded >= rtt * 0.7 && sdkAdded <= rtt * 1.3,
        peakRss: null,
        raw: { files: FILES, perObjectMs: sdkPerObject, addedMs: sdkAdded, rttMs: rtt },
      },
      {
        what: `calibration: rclone copy of 1 KiB objects, ${labels.shaped} (ms per object)`,
        baseline: `${perObject.direct!.toFixed(1)} ms (${labels.direct})`,
        stowage: `${perObject.shaped!.toFixed(1)} ms (shaped)`,
        ratio: `+${added.toFixed(1)} ms per object: ${(added / rtt).toFixed(1)} round trips`,
        goal: 'reported (rclone reads each object back)',
        pass: null,
        peakRss: null,
        raw: { files: FILES, perObjectMs: perObject, addedMs: added, rttMs: rtt },
      },
    ];
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await runIfMain(import.meta.url, () => runCalibrationBench());
