/**
 * `npm run bench [-- --quick] [-- --only name]`: every benchmark, each measuring its baseline and
 * Stowage in the same run, writing bench/results.md (one table) and bench/results.json.
 */
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { BenchRow } from './lib.js';

type Bench = { name: string; run: (o: { quick: boolean }) => Promise<BenchRow[]> };

const BENCHES: Bench[] = [
  { name: 'calibration', run: async () => (await import('./calibration.js')).runCalibrationBench() },
  { name: 'queue-overhead', run: async (o) => (await import('./queue-overhead.js')).runQueueOverheadBench(o) },
  { name: 'artifact', run: async (o) => (await import('./artifact.js')).runArtifactBench(o) },
  { name: 'memory', run: async (o) => (await import('./memory.js')).runMemoryBench(o) },
  { name: 'upload', run: async (o) => (await import('./upload.js')).runUploadBench(o) },
  { name: 'resume', run: async (o) => (await import('./resume.js')).runResumeBench(o) },
  { name: 'scaling', run: async (o) => (await import('./scaling.js')).runScalingBench(o) },
  { name: 'backup', run: async (o) => (await import('./backup.js')).runBackupBench(o) },
  { name: 'cleanup', run: async (o) => (await import('./cleanup.js')).runCleanupBench(o) },
  { name: 'aggregation', run: async (o) => (await import('./aggregation.js')).runAggregationBench(o) },
  { name: 'cluster', run: async (o) => (await import('./cluster.js')).runClusterBench(o) },
];

const quick = process.argv.includes('--quick');
const onlyIdx = process.argv.indexOf('--only');
const only = onlyIdx >= 0 ? process.argv[onlyIdx + 1]?.split(',') : undefined;
const chosen = BENCHES.filter((b) => !only || only.includes(b.name));
if (only && chosen.length !== only.length) {
  console.error(`stowage bench: unknown benchmark in --only ${only.join(',')}; known: ${BENCHES.map((b) => b.name).join(', ')}`);
  process.exit(64);
}

const rows: (BenchRow & { bench: string })[] = [];
for (const bench of chosen) {
  process.stderr.write(`bench ${bench.name}${quick ? ' (quick)' : ''}…\n`);
  const started = Date.now();
  try {
    for (const row of await bench.run({ quick })) rows.push({ bench: bench.name, ...row });
    process.stderr.write(`bench ${bench.name} done in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  } catch (err) {
    // One broken benchmark (a service hiccup, another session's lock) must not lose the others' rows.
    const message = (err as Error).message?.split('\n')[0] ?? String(err);
    process.stderr.write(
      `bench ${bench.name} FAILED after ${((Date.now() - started) / 1000).toFixed(1)} s: ${(err as Error).stack ?? message}\n`,
    );
    rows.push({
      bench: bench.name,
      what: `${bench.name}: FAILED (${message.replaceAll('|', '/')})`,
      baseline: '—',
      stowage: '—',
      ratio: '—',
      goal: '—',
      pass: false,
      peakRss: null,
      raw: { error: message },
    });
  }
}

const mark = (p: boolean | null) => (p === null ? '—' : p ? 'met' : 'MISSED');
const md = [
  `# Benchmark results`,
  '',
  `${new Date().toISOString()}, ${quick ? 'quick sizes' : 'full sizes'}, Node ${process.version}. Baseline and Stowage measured in the same run.`,
  '',
  '| what | baseline | Stowage | ratio | goal | goal met | peak RSS |',
  '| --- | --- | --- | --- | --- | --- | --- |',
  ...rows.map((r) => `| ${r.what} | ${r.baseline} | ${r.stowage} | ${r.ratio} | ${r.goal} | ${mark(r.pass)} | ${r.peakRss ?? '—'} |`),
  '',
].join('\n');
const dir = fileURLToPath(new URL('.', import.meta.url));
await writeFile(`${dir}results.md`, md);
await writeFile(`${dir}results.json`, JSON.stringify({ at: new Date().toISOString(), quick, rows }, null, 2));
process.stdout.write(md);
process.exit(rows.some((r) => (r.raw as { error?: string }).error) ? 1 : 0);
