/**
 * Resume after a crash: a build-artifact-shaped upload (scan → zip → uploadStream with its state
 * in Redis, bench/stowage-child.ts `resumable`) is SIGKILLed once the store has acknowledged 80%
 * of the object, and a new process takes it over: it lists the parts, zips the folder again,
 * re-hashes the acknowledged parts instead of sending them, sends the rest and completes. The row
 * compares the time from the kill to the completed object with a fresh upload's time, and checks
 * the resumed object's SHA-256 equals the fresh one's. Both are taken by a worker process that is
 * already running (connected, store probed), as in a fleet where another worker takes the job
 * over; the queue's stall detection before that (lockDuration) is the queue's, not the upload's,
 * and is left out. Direct and shaped (30 ms RTT, 50 MB/s); the goal (≤ 0.35×) is for the
 * shaped store, where sending bytes costs what it costs against R2.
 *
 *   npx tsx bench/resume.ts [--quick]
 */
import { spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { MB, fmtMb, generateMixed, runIfMain, stowageEnv, type BenchRow } from './lib.js';
import { startS3, storeLabel, storeModes, type BenchS3 } from './store.js';

const CHILD = fileURLToPath(new URL('./stowage-child.ts', import.meta.url));
const KILL_AT = 0.8;

type UploadOut = { size: number; sha256: string; resumedParts: number };

/** A `resumable` child process; its stdout lines go to `onLine`, its exit settles `exited`. */
function spawnChild(env: NodeJS.ProcessEnv, args: string[], onLine: (line: Record<string, unknown>) => void) {
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, 'resumable', ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let buffered = '';
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  child.stdout.on('data', (d: Buffer) => {
    buffered += d.toString();
    const lines = buffered.split('\n');
    buffered = lines.pop()!;
    for (const line of lines) onLine(JSON.parse(line) as Record<string, unknown>);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve({ code, signal, stderr }));
  });
  return { child, exited };
}

/**
 * A worker that is already running (connected, store probed: BENCH_GO_STDIN) and starts the
 * upload on go(); go() resolves with the time from go to the upload's result line.
 */
async function warmChild(env: NodeJS.ProcessEnv, args: string[]) {
  let ready!: () => void;
  const isReady = new Promise<void>((r) => {
    ready = r;
  });
  let done!: (out: { result: UploadOut; maxRssBytes: number; at: number }) => void;
  const finished = new Promise<{ result: UploadOut; maxRssBytes: number; at: number }>((r) => {
    done = r;
  });
  // When each part was acknowledged (verified and skipped, or stored), in ms after go(): where a
  // takeover's time goes.
  const acks: number[] = [];
  let started = 0;
  const { child, exited } = spawnChild({ ...env, BENCH_GO_STDIN: '1' }, args, (line) => {
    if (line.ready) ready();
    if (line.acked !== undefined && started) acks.push(Math.round(performance.now() - started));
    if (line.result) done({ result: line.result as UploadOut, maxRssBytes: line.maxRssBytes as number, at: performance.now() });
  });
  const failed = exited.then(({ code, signal, stderr }) => {
    throw new Error(`resumable child exited ${code ?? signal} before its result: ${stderr}`);
  });
  await Promise.race([isReady, failed]);
  return {
    /** Start now; `from` (default now) is when the clock started. */
    async go(from = performance.now()) {
      started = from;
      child.stdin.write('go\n');
      const out = await Promise.race([finished, failed]);
      await exited;
      return { ms: out.at - from, result: out.result, maxRssBytes: out.maxRssBytes, acks };
    },
  };
}

/** A child SIGKILLed once `killAtBytes` are acknowledged; resolves when it is dead, with the bytes acknowledged then. */
async function killedChild(env: NodeJS.ProcessEnv, args: string[], killAtBytes: number): Promise<number> {
  let killedAt: number | undefined;
  const { child, exited } = spawnChild(env, args, (line) => {
    const acked = line.acked as number | undefined;
    if (killedAt === undefined && acked !== undefined && acked >= killAtBytes) {
      killedAt = acked;
      child.kill('SIGKILL');
    }
  });
  const { code, signal, stderr } = await exited;
  if (signal !== 'SIGKILL') throw new Error(`the upload ended (${code}) before ${killAtBytes} bytes were acknowledged: ${stderr}`);
  return killedAt!;
}

export async function runResumeBench({ quick }: { quick: boolean }): Promise<BenchRow[]> {
  const bytes = (quick ? 256 : 1024) * MB;
  const work = await mkdtemp(join(tmpdir(), 'stowage-bench-resume-'));
  const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
  const rows: BenchRow[] = [];
  try {
    // Mixed (half text, deflated): what a web build looks like. Incompressible (stored entries):
    // media and already-compressed files, where the re-zip is only CRC-32 and SHA-256.
    const corpora = { mixed: join(work, 'mixed'), incompressible: join(work, 'incompressible') } as const;
    await generateMixed(corpora.mixed, bytes);
    await generateRandom(corpora.incompressible, bytes);
    for (const mode of storeModes()) {
      const s3 = await startS3(`bench-resume-${mode}`, { shaped: mode === 'shaped' });
      try {
        for (const [corpus, folder] of Object.entries(corpora)) rows.push(await resumeRow(s3, redis, folder, bytes, corpus));
      } finally {
        await s3.close();
      }
    }
    return rows;
  } finally {
    redis.disconnect();
    await rm(work, { recursive: true, force: true });
  }
}

/** `bytes` of random data in 8 MB files. */
async function generateRandom(dir: string, bytes: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (let i = 0, done = 0; done < bytes; i++, done += 8 * MB) {
    await writeFile(join(dir, `media-${i}.bin`), randomFillSync(Buffer.allocUnsafe(Math.min(8 * MB, bytes - done))));
  }
}

async function resumeRow(s3: BenchS3, redis: Redis, folder: string, bytes: number, corpus: string): Promise<BenchRow> {
  const env = stowageEnv(s3, { STOWAGE_PART_SIZE_MB: '8', STOWAGE_UPLOAD_QUEUE_SIZE: '4' });
  const state = (name: string) => `bench-resume:${s3.bucket}:${corpus}:${name}`;
  await redis.del(state('fresh'), state('crash'));
  const fresh = await (await warmChild(env, [folder, `${corpus}/fresh.zip`, state('fresh')])).go();
  const size = fresh.result.size;
  // The worker that takes the job over is running before the kill, as in a fleet.
  const takeover = await warmChild(env, [folder, `${corpus}/crash.zip`, state('crash')]);
  const killedAt = await killedChild(env, [folder, `${corpus}/crash.zip`, state('crash')], Math.floor(size * KILL_AT));
  const resumed = await takeover.go();
  await redis.del(state('fresh'), state('crash'));
  if (resumed.result.sha256 !== fresh.result.sha256) {
    throw new Error(`resume bench: the resumed object's SHA-256 ${resumed.result.sha256} is not the fresh run's ${fresh.result.sha256}`);
  }
  if (resumed.result.resumedParts === 0) throw new Error('resume bench: the second process resumed no part');
  const ratio = resumed.ms / fresh.ms;
  const shaped = s3.shaper !== null;
  const parts = Math.ceil(size / (8 * 1024 * 1024));
  return {
    what: `resume after SIGKILL at ${Math.round((killedAt / size) * 100)}% of a ${fmtMb(size)} artifact (${fmtMb(bytes)} folder, ${corpus}), ${storeLabel(s3)}: kill → completed vs a fresh upload`,
    baseline: `${(fresh.ms / 1000).toFixed(2)} s (a fresh upload, start to completed object)`,
    stowage: `${(resumed.ms / 1000).toFixed(2)} s (kill to completed object, another running worker: ListParts, re-zip, ${resumed.result.resumedParts} of ${parts} parts verified by SHA-256 and not sent)`,
    ratio: `${ratio.toFixed(2)}× a fresh upload's time, same SHA-256`,
    goal: shaped ? '≤ 0.35×' : 'none direct (the server shares the two cores)',
    pass: shaped ? ratio <= 0.35 : null,
    peakRss: `fresh ${fmtMb(fresh.maxRssBytes)} / resumed ${fmtMb(resumed.maxRssBytes)}`,
    raw: {
      size,
      freshMs: fresh.ms,
      killedAtBytes: killedAt,
      resumedMs: resumed.ms,
      resumedParts: resumed.result.resumedParts,
      resumedAckMs: resumed.acks,
      ratio,
    },
  };
}

await runIfMain(import.meta.url, (argv) => runResumeBench({ quick: argv.includes('--quick') }));
