/**
 * Artifact pipeline: a generated build folder (~230 MB: 100 MB already-compressed or random
 * .png/.woff2/.bin, 130 MB of real JS/TS/JSON/Markdown taken from node_modules) zipped and uploaded to the same in-process s3rver by
 *   baseline — the seed's way: archiver zip level 6 to a temp file, SHA-256 of the file, then
 *              lib-storage Upload of the file;
 *   Stowage  — one streaming pass: scan → zip (store what will not shrink, deflate level 4,
 *              files read ahead in parallel) → SHA-256/size tap → multipart upload.
 * Each run is a child process (bench/artifact-child.ts) so its peak RSS is its own; the time is
 * the work inside the child (process start-up excluded for both). Goals: ≥ 3× faster; artifact
 * at most 1.03× the baseline's size.
 *
 *   npx tsx bench/artifact.ts [--quick]
 */
import { execFile } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { startS3 } from '../test/helpers/s3.js';
import { runIfMain, type BenchRow } from './lib.js';

const MB = 1_000_000;
const CHILD = fileURLToPath(new URL('./artifact-child.ts', import.meta.url));

const TEXT_EXTENSIONS = /\.(js|mjs|cjs|ts|mts|cts|json|md|css|html|map)$/;

/**
 * Real text for the text part: this repository's node_modules (JS, TS, JSON, Markdown, source
 * maps), walked in sorted order, so the run is repeatable for a given package-lock. Generated
 * text would not do: its statistics decide how much faster a low deflate level is.
 */
async function* textCorpus(): AsyncGenerator<{ rel: string; content: Buffer }> {
  const root = fileURLToPath(new URL('../node_modules', import.meta.url));
  const files: string[] = [];
  const walk = async (dir: string, rel: string): Promise<void> => {
    for (const e of (await readdir(join(root, dir), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(join(dir, e.name), r);
      else if (e.isFile() && TEXT_EXTENSIONS.test(e.name)) files.push(r);
    }
  };
  await walk('', '');
  if (!files.length) throw new Error('the artifact bench takes its text from node_modules: run npm ci first');
  for (let round = 0; ; round++) {
    for (const f of files) yield { rel: round ? `copy-${round}/${f}` : f, content: await readFile(join(root, f)) };
  }
}

/** The build folder: `scale` 1 ≈ 230 MB. */
async function generate(dir: string, scale: number): Promise<number> {
  let total = 0;
  const put = async (rel: string, content: Buffer) => {
    await mkdir(join(dir, rel, '..'), { recursive: true });
    await writeFile(join(dir, rel), content);
    total += content.length;
  };
  const rand = (n: number) => randomFillSync(Buffer.allocUnsafe(n));
  const count = (n: number) => Math.max(1, Math.round(n * scale));
  // 100 MB that does not compress: images, fonts, and two large binaries (caught by the probe).
  for (let i = 0; i < count(60); i++) await put(`assets/img/photo-${i}.png`, rand(500_000));
  for (let i = 0; i < count(40); i++) await put(`assets/fonts/font-${i}.woff2`, rand(250_000));
  for (let i = 0; i < 2; i++) await put(`assets/data-${i}.bin`, rand(Math.round(30 * MB * scale)));
  // 130 MB of text: four 10 MB bundles (concatenated modules, streamed) and the modules
  // themselves as separate files (read ahead).
  const corpus = textCorpus();
  const next = async () => (await corpus.next()).value as { rel: string; content: Buffer };
  for (let i = 0; i < 4; i++) {
    const parts: Buffer[] = [];
    let n = 0;
    while (n < 10 * MB * scale) {
      const { content } = await next();
      parts.push(content);
      n += content.length;
    }
    await put(`static/chunks/bundle-${i}.js`, Buffer.concat(parts));
  }
  const textEnd = total + 90 * MB * scale;
  while (total < textEnd) {
    const { rel, content } = await next();
    await put(`src/${rel}`, content);
  }
  await corpus.return(undefined);
  await mkdir(join(dir, 'empty-dir'), { recursive: true });
  return total;
}

interface ChildResult {
  mode: 'baseline' | 'stowage';
  size: number;
  sha256: string;
  ms: number;
  maxRssBytes: number;
}

export async function runArtifactBench({ quick }: { quick: boolean }): Promise<BenchRow[]> {
  const work = await mkdtemp(join(tmpdir(), 'stowage-bench-artifact-'));
  const s3 = await startS3('bench-artifact');
  try {
    const source = join(work, 'build');
    const sourceBytes = await generate(source, quick ? 0.2 : 1);
    const env = {
      ...process.env,
      R2_ENDPOINT: s3.endpoint,
      R2_BUCKET: s3.bucket,
      R2_ACCESS_KEY_ID: s3.accessKeyId,
      R2_SECRET_ACCESS_KEY: s3.secretAccessKey,
      LOG_LEVEL: 'silent',
    };
    // Async: s3rver runs in this process and must keep serving while a child uploads.
    const runChild = async (mode: ChildResult['mode'], key: string): Promise<ChildResult> => {
      const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', CHILD, mode, source, key], {
        env,
        maxBuffer: 1 << 20,
      });
      return JSON.parse(stdout.trim().split('\n').at(-1)!) as ChildResult;
    };
    // Alternate the two and keep each one's best run, so neither gains from running second.
    const rounds = quick ? 1 : 2;
    const runs: Record<ChildResult['mode'], ChildResult[]> = { baseline: [], stowage: [] };
    for (let i = 0; i < rounds; i++) {
      runs.baseline.push(await runChild('baseline', `bench/baseline-${i}.zip`));
      runs.stowage.push(await runChild('stowage', `bench/stowage-${i}.zip`));
    }
    const best = (rs: ChildResult[]) => rs.reduce((a, b) => (b.ms < a.ms ? b : a));
    const base = best(runs.baseline);
    const ours = best(runs.stowage);
    const peak = (rs: ChildResult[]) => Math.max(...rs.map((r) => r.maxRssBytes)) / MB;
    const peakRss = `baseline ${peak(runs.baseline).toFixed(0)} MB / stowage ${peak(runs.stowage).toFixed(0)} MB`;
    const speedup = base.ms / ours.ms;
    const sizeRatio = ours.size / base.size;
    const label = `${(sourceBytes / MB).toFixed(0)} MB build folder`;
    const raw = { sourceBytes, rounds, runs };
    return [
      {
        what: `artifact: zip + SHA-256 + upload, ${label}`,
        baseline: `${(base.ms / 1000).toFixed(2)} s`,
        stowage: `${(ours.ms / 1000).toFixed(2)} s`,
        ratio: `${speedup.toFixed(2)}× faster`,
        goal: '≥ 3× faster',
        pass: speedup >= 3,
        peakRss,
        raw,
      },
      {
        what: `artifact: zip size, ${label}`,
        baseline: `${(base.size / MB).toFixed(1)} MB`,
        stowage: `${(ours.size / MB).toFixed(1)} MB`,
        ratio: `${sizeRatio.toFixed(3)}× baseline`,
        goal: '≤ 1.03× baseline',
        pass: sizeRatio <= 1.03,
        peakRss: null,
        raw: { baselineSize: base.size, stowageSize: ours.size },
      },
    ];
  } finally {
    await s3.close();
    await rm(work, { recursive: true, force: true });
  }
}

await runIfMain(import.meta.url, (argv) => runArtifactBench({ quick: argv.includes('--quick') }));
