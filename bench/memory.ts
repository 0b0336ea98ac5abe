/**
 * Memory vs size: the artifact pipeline (scan → zip → SHA-256 tap → multipart upload, in a child
 * process: bench/artifact-child.ts) on generated folders of growing size, half random data and
 * half text. Goals: peak RSS flat (the largest at most 50 MB above the middle size's) and ≤ 200 MB
 * at the largest, and time linear in size (throughput at the largest at least 0.75× the smallest's).
 * No baseline: this row checks Stowage against its own limits.
 *
 * Full size also runs each size from compiled JavaScript (bench/compiled.ts, run by
 * bench/memory-child.mjs under plain node), the way a production worker runs: tsx alone adds ~40 MB to the peak, which is the dev loader's, not the pipeline's. The RSS goals are
 * judged on the compiled run when there is one; quick mode skips the 15-second build.
 *
 *   npx tsx bench/memory.ts [--quick] [--compiled]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compiledSrc } from './compiled.js';
import { startS3 } from './store.js';
import { MB, fmtMb, generateMixed, runIfMain, runTsChild, stowageEnv, type BenchRow } from './lib.js';

const CHILD = fileURLToPath(new URL('./artifact-child.ts', import.meta.url));
const COMPILED_CHILD = fileURLToPath(new URL('./memory-child.mjs', import.meta.url));

async function runCompiled(
  dist: string,
  source: string,
  key: string,
  env: NodeJS.ProcessEnv,
): Promise<{ ms: number; maxRssBytes: number }> {
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  const { stdout } = await promisify(execFile)(process.execPath, [COMPILED_CHILD, dist, source, key], { env, maxBuffer: 1 << 20 });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as { ms: number; maxRssBytes: number };
}
const RSS_LIMIT = 200 * MB;
const RSS_GROWTH = 50 * MB;

export async function runMemoryBench({ quick, compiled = !quick }: { quick: boolean; compiled?: boolean }): Promise<BenchRow[]> {
  const sizes = (quick ? [20, 50, 100] : [100, 500, 2000]).map((n) => n * MB);
  const runs: {
    bytes: number;
    ms: number;
    maxRssBytes: number;
    size: number;
    zipOnlyMs: number;
    compiled?: { ms: number; maxRssBytes: number };
  }[] = [];
  const dist = compiled ? await compiledSrc() : undefined;
  let compiledFixedRssBytes = 0;
  // The process's fixed cost: the same child, same modules loaded, storing a 1 kB folder.
  let fixedRssBytes = 0;
  {
    const work = await mkdtemp(join(tmpdir(), 'stowage-bench-memory-'));
    const s3 = await startS3('bench-memory');
    try {
      await generateMixed(join(work, 'tiny'), 1000);
      fixedRssBytes = (await runTsChild(CHILD, ['stowage', join(work, 'tiny'), 'bench/tiny.zip'], stowageEnv(s3))).maxRssBytes;
      if (dist)
        compiledFixedRssBytes = (await runCompiled(dist, join(work, 'tiny'), 'bench/tiny-compiled.zip', stowageEnv(s3))).maxRssBytes;
    } finally {
      await s3.close();
      await rm(work, { recursive: true, force: true });
    }
  }
  for (const bytes of sizes) {
    // A fresh folder and store per size: at 2 GB both weigh on the disk.
    const work = await mkdtemp(join(tmpdir(), 'stowage-bench-memory-'));
    const s3 = await startS3('bench-memory');
    try {
      const source = join(work, 'build');
      await generateMixed(source, bytes);
      // The zip and hash alone first (output discarded): how much of the time is Stowage's own.
      const z = await runTsChild(CHILD, ['zip-only', source], stowageEnv(s3));
      const r = await runTsChild(CHILD, ['stowage', source, `bench/memory-${bytes}.zip`], stowageEnv(s3));
      const c = dist ? await runCompiled(dist, source, `bench/memory-${bytes}-compiled.zip`, stowageEnv(s3)) : undefined;
      runs.push({ bytes, ms: r.ms, maxRssBytes: r.maxRssBytes, size: r.size as number, zipOnlyMs: z.ms, ...(c ? { compiled: c } : {}) });
    } finally {
      await s3.close();
      await rm(work, { recursive: true, force: true });
    }
  }
  const mbps = (r: (typeof runs)[number]) => r.bytes / MB / (r.ms / 1000);
  const zipMbps = (r: (typeof runs)[number]) => r.bytes / MB / (r.zipOnlyMs / 1000);
  const first = runs[0]!;
  const last = runs.at(-1)!;
  // Flat: from the middle size to the largest (4× the data at full size). The smallest run ends
  // before the pipeline's buffers (parts in flight, read-ahead, garbage awaiting GC) fill up.
  const middle = runs[Math.floor(runs.length / 2)]!;
  const rss = (r: (typeof runs)[number]) => (r.compiled ?? r).maxRssBytes;
  const rssFlat = rss(last) - rss(middle) <= RSS_GROWTH;
  const capped = last.compiled ?? last;
  const rssCapped = capped.maxRssBytes <= RSS_LIMIT;
  const linear = mbps(last) >= 0.75 * mbps(first);
  return [
    {
      what: `memory vs size: artifacts of ${sizes.map((s) => fmtMb(s)).join(', ')} (half random, half text)`,
      baseline: `— (process fixed cost: ${fmtMb(fixedRssBytes)} RSS storing a 1 kB folder)`,
      stowage: runs
        .map(
          (r) =>
            `${fmtMb(r.bytes)}: ${(r.ms / 1000).toFixed(1)} s, ${mbps(r).toFixed(0)} MB/s to radosgw (zip + hash alone ${zipMbps(r).toFixed(0)} MB/s)`,
        )
        .join('; '),
      ratio: `RSS ${rss(last) >= rss(middle) ? '+' : '−'}${fmtMb(Math.abs(rss(last) - rss(middle)))} from ${fmtMb(middle.bytes)} to ${fmtMb(last.bytes)}; MB/s ${(mbps(last) / mbps(first)).toFixed(2)}× to radosgw and ${(zipMbps(last) / zipMbps(first)).toFixed(2)}× zip + hash alone, smallest to largest`,
      goal: `RSS flat (+≤ 50 MB middle → largest), ≤ 200 MB at the largest${dist ? ' (compiled JS)' : ''}; MB/s ≥ 0.75× (linear time)`,
      pass: rssFlat && rssCapped && linear,
      peakRss:
        `stowage under tsx ${runs.map((r) => fmtMb(r.maxRssBytes)).join(' / ')} (fixed cost ${fmtMb(fixedRssBytes)})` +
        (dist
          ? `; compiled JS ${runs.map((r) => fmtMb(r.compiled!.maxRssBytes)).join(' / ')} (fixed cost ${fmtMb(compiledFixedRssBytes)})`
          : ''),
      raw: { runs, fixedRssBytes, compiledFixedRssBytes, rssFlat, rssCapped, linear },
    },
  ];
}

await runIfMain(import.meta.url, (argv) => {
  const quick = argv.includes('--quick');
  return runMemoryBench({ quick, compiled: !quick || argv.includes('--compiled') });
});
