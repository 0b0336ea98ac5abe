/**
 * Horizontal scaling: 20 build-artifact jobs drained by 1 worker process, then by 2 and 4, each a real
 * `stowage worker --queues build-artifact --concurrency 1` process (the compiled CLI), against the
 * same Redis, Postgres schema and radosgw, directly and through the link shaper (bench/shaper.ts). The clock starts when every worker is connected (the
 * queue reports them) and the jobs are enqueued in one addBulk, and stops when the last one has
 * completed: process start-up is not part of the figure. Concurrency 1 per process, so the row
 * measures processes, not in-process concurrency. Goals: direct, 2 processes ≥ 1.7× 1 process's
 * rate (on 2 cores the ceiling is below 2×: the zip writer already puts compression on libuv's
 * thread pool, and radosgw hashes and writes every byte too); shaped (I/O-bound: the store is
 * 30 ms away), 2 processes ≥ 1.8× and 4 ≥ 3×.
 *
 *   npx tsx bench/scaling.ts [--quick]
 */
import { migrate } from '../src/db/migrate.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { loadConfig } from '../src/config.js';
import { DEFAULT_JOB_OPTIONS, jobIdFor, openQueue, parsePayload } from '../src/queues/index.js';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { compiledSrc } from './compiled.js';
import { ceilingNote, linkFloorMs, startS3, storeLabel, storeModes, type BenchS3 } from './store.js';
import { MB, cleanupPrefix, fmtMb, generateMixed, stowageEnv, type BenchRow, runIfMain } from './lib.js';

const JOBS = 20;
const KIND = 'build-artifact';

/** CPU seconds (user + system) a process has used so far, from /proc; 0 once it is gone. */
async function cpuSeconds(pid: number): Promise<number> {
  const { readFile } = await import('node:fs/promises');
  try {
    const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ');
    // utime and stime are fields 14 and 15 of stat (11 and 12 after the command), in clock ticks (100/s).
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

/** Peak RSS of a process tree root from /proc (VmHWM), in bytes; 0 once it is gone. */
async function vmHwm(pid: number): Promise<number> {
  const { readFile } = await import('node:fs/promises');
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

async function drainWith(procs: number, o: { env: NodeJS.ProcessEnv; prefix: string; redisUrl: string; buildDir: string; round: string }) {
  const redis = new Redis(o.redisUrl, { maxRetriesPerRequest: null });
  const queue = openQueue(KIND, { connection: redis, prefix: o.prefix });
  const children: ChildProcess[] = [];
  try {
    for (let i = 0; i < procs; i++) {
      const prof = process.env.BENCH_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_CPU_PROF] : [];
      // The compiled CLI (bench/compiled.ts), as a deployed worker runs: under tsx each process
      // also paid the loader's start-up and esbuild's per-closure helper on two shared cores.
      const main = join(await compiledSrc(), 'cli/main.js');
      const child = spawn(process.execPath, [...prof, main, 'worker', '--queues', KIND, '--concurrency', '1'], {
        env: o.env,
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr!.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4000)));
      child.on('exit', (code) => {
        if (code && code !== 0 && code !== 143) process.stderr.write(`bench scaling: worker exited ${code}: ${stderr}\n`);
      });
      children.push(child);
    }
    const readyBy = Date.now() + 60_000;
    while ((await queue.getWorkersCount()) < procs) {
      const dead = children.find((c) => c.exitCode !== null);
      if (dead) throw new Error(`bench scaling: a worker exited with ${dead.exitCode} before it connected`);
      if (Date.now() > readyBy) throw new Error(`bench scaling: ${procs} worker(s) did not connect within 60 s`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const jobs = Array.from({ length: JOBS }, (_, i) => {
      const data = parsePayload(KIND, { userId: 'bench', projectId: `scaling-${o.round}`, versionId: `v${i}`, buildDir: o.buildDir });
      return { name: KIND, data, opts: { ...DEFAULT_JOB_OPTIONS[KIND], jobId: jobIdFor(KIND, data) } };
    });
    const cpuBefore = await Promise.all(children.map((c) => cpuSeconds(c.pid!)));
    const parentBefore = process.cpuUsage();
    const started = performance.now();
    await queue.addBulk(jobs);
    let peak = 0;
    for (;;) {
      const c = await queue.getJobCounts('completed', 'failed');
      if ((c.failed ?? 0) > 0) {
        const [failed] = await queue.getFailed(0, 0);
        throw new Error(`bench scaling: a job failed: ${failed?.failedReason}`);
      }
      if ((c.completed ?? 0) >= JOBS) break;
      for (const child of children) peak = Math.max(peak, await vmHwm(child.pid!));
      await new Promise((r) => setTimeout(r, 50));
    }
    const ms = performance.now() - started;
    // Cores kept busy while draining: the workers, and this process (s3rver, which hashes and
    // writes every byte, and the polling). On a 2-core machine ~2.0 means the box is saturated.
    const parent = process.cpuUsage(parentBefore);
    const workersCpu = (await Promise.all(children.map((c) => cpuSeconds(c.pid!)))).reduce((a, s, i) => a + s - cpuBefore[i]!, 0);
    const coresBusy = { workers: workersCpu / (ms / 1000), s3rver: (parent.user + parent.system) / 1e6 / (ms / 1000) };
    for (const child of children) peak = Math.max(peak, await vmHwm(child.pid!));
    return { ms, maxRssBytes: peak, coresBusy };
  } finally {
    await Promise.all(
      children.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exitCode !== null) return resolve();
            c.once('exit', () => resolve());
            c.kill('SIGTERM');
          }),
      ),
    );
    await queue.close();
    redis.disconnect();
  }
}

/** Bytes of every object in the bench's bucket (each drain's artifacts, sidecars and manifests). */
async function bucketBytes(s3: BenchS3): Promise<number> {
  let total = 0;
  let token: string | undefined;
  do {
    const page = await s3.client.send(new ListObjectsV2Command({ Bucket: s3.bucket, ContinuationToken: token }));
    for (const o of page.Contents ?? []) total += o.Size ?? 0;
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return total;
}

export async function runScalingBench({ quick }: { quick: boolean }): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const mode of storeModes()) rows.push(...(await scalingRows(mode, quick)));
  return rows;
}

async function scalingRows(mode: 'direct' | 'shaped', quick: boolean): Promise<BenchRow[]> {
  const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
  const tag = `${Date.now().toString(36)}${mode[0]}`;
  const schema = `bench_scaling_${tag}`;
  const work = await mkdtemp(join(tmpdir(), 'stowage-bench-scaling-'));
  const s3 = await startS3(`bench-scaling-${mode}`, { shaped: mode === 'shaped' });
  const artifactBytes = (quick ? 4 : 24) * MB;
  const prefixes: string[] = [];
  try {
    const buildDir = join(work, 'build');
    await generateMixed(buildDir, artifactBytes, 2 * 1024 * 1024);
    const base = {
      REDIS_URL: redisUrl,
      STOWAGE_DB_SCHEMA: schema,
      ...(process.env.DATABASE_URL ? { DATABASE_URL: process.env.DATABASE_URL } : {}),
    };
    await migrate(loadConfig({ ...base, STOWAGE_PREFIX: `bench-scl-${tag}` }, {}));
    // One round each way: 1, 2 and 4 processes, then again in the other order (full mode).
    const order = quick ? [1, 2, 4] : [1, 2, 4, 4, 2, 1];
    const runs: Record<number, { ms: number; maxRssBytes: number; coresBusy: { workers: number; s3rver: number } }[]> = {
      1: [],
      2: [],
      4: [],
    };
    for (const [i, procs] of order.entries()) {
      const prefix = `bench-scl-${tag}-${i}`;
      prefixes.push(prefix);
      const env = stowageEnv(s3, { ...base, STOWAGE_PREFIX: prefix });
      runs[procs]!.push(await drainWith(procs, { env, prefix, redisUrl, buildDir, round: String(i) }));
    }
    const bestRun = <T extends { ms: number }>(rs: T[]) => rs.reduce((a, b) => (b.ms < a.ms ? b : a));
    const rate = (ms: number) => JOBS / (ms / 1000);
    const cores = (r: (typeof runs)[1][number]) =>
      `${(r.coresBusy.workers + r.coresBusy.s3rver).toFixed(1)} cores busy (workers ${r.coresBusy.workers.toFixed(1)}, this process ${r.coresBusy.s3rver.toFixed(1)})`;
    const peak = (rs: { maxRssBytes: number }[]) => fmtMb(Math.max(...rs.map((r) => r.maxRssBytes)));
    const oneRun = bestRun(runs[1]!);
    const shaped = s3.shaper !== null;
    // Shaped, no number of processes drains faster than the link's floor for the bytes stored,
    // so a speedup is capped at one process's time over that floor.
    const storedBytes = (await bucketBytes(s3)) / order.length;
    const floorMs = linkFloorMs(s3, storedBytes);
    // Shaped, the jobs wait on the link, not the two cores: the goals of issue 21 hold there.
    const goals: Record<number, number> = shaped ? { 2: 1.8, 4: 3 } : { 2: 1.7, 4: 1.7 };
    return [2, 4].map((procs) => {
      const run = bestRun(runs[procs]!);
      const speedup = oneRun.ms / run.ms;
      const ceiling = floorMs === null ? null : oneRun.ms / floorMs;
      const capped = ceilingNote(ceiling, `${fmtMb(storedBytes)} in ${((floorMs ?? 0) / 1000).toFixed(2)} s`, goals[procs]!);
      return {
        what: `horizontal scaling: ${JOBS} artifact jobs of ${fmtMb(artifactBytes)}, ${procs} vs 1 worker process at concurrency 1, ${storeLabel(s3)}`,
        baseline: `1 process: ${(oneRun.ms / 1000).toFixed(2)} s (${rate(oneRun.ms).toFixed(1)} jobs/s; ${cores(oneRun)})`,
        stowage: `${procs} processes: ${(run.ms / 1000).toFixed(2)} s (${rate(run.ms).toFixed(1)} jobs/s; ${cores(run)})`,
        ratio: `${speedup.toFixed(2)}× faster${capped}`,
        goal: `≥ ${goals[procs]}×`,
        pass: speedup >= goals[procs]!,
        peakRss: `per worker process: 1 proc ${peak(runs[1]!)} / ${procs} procs ${peak(runs[procs]!)}`,
        raw: { artifactBytes, runs, speedup, procs, storedBytes, floorMs, ceiling },
      };
    });
  } finally {
    await s3.close();
    await rm(work, { recursive: true, force: true });
    for (const p of prefixes) await cleanupPrefix(redisUrl, p);
    const client = new pg.Client({ connectionString: process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres' });
    await client.connect();
    await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await client.end();
  }
}

await runIfMain(import.meta.url, (argv) => runScalingBench({ quick: argv.includes('--quick') }));
