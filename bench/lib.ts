/** Shared benchmark plumbing: the row shape and Redis cleanup. */
import { Redis } from 'ioredis';

export interface BenchRow {
  what: string;
  baseline: string;
  stowage: string;
  ratio: string;
  goal: string;
  pass: boolean | null;
  /** Peak RSS, e.g. "baseline 180 MB / stowage 95 MB", or null when not measured. */
  peakRss: string | null;
  raw: Record<string, unknown>;
}

/**
 * Where one artifact run's time went (bench/artifact-child.ts with BENCH_STAGES=1): ms from the
 * run's start for the scan, the zip's first and last byte, and each store request (its command and key).
 */
export interface Timeline {
  scanned?: number;
  zipFirstByte?: number;
  zipEnd?: number;
  requests: { command: string; key: string; start: number; end: number }[];
}

export async function cleanupPrefix(redisUrl: string, prefix: string): Promise<void> {
  const redis = new Redis(redisUrl);
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length) await redis.del(...keys);
  } while (cursor !== '0');
  redis.disconnect();
}

export const MB = 1_000_000;

export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
export const fmtMb = (bytes: number): string => `${(bytes / MB).toFixed(0)} MB`;

export interface CommandRun {
  ms: number;
  /** Peak RSS of the command (GNU time's %M), in bytes. */
  maxRssBytes: number;
  stdout: string;
}

/**
 * Run a baseline command under GNU time and measure it: wall time around the spawn, peak RSS
 * from `%M`. Always async: a bench's link shaper runs in this process and must keep serving.
 */
export async function timeCommand(
  cmd: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Promise<CommandRun> {
  const { spawn } = await import('node:child_process');
  const marker = '__bench_maxrss_kb=';
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn('/usr/bin/time', ['-f', `${marker}%M`, cmd, ...args], {
      env: options.env ?? process.env,
      cwd: options.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      const ms = performance.now() - started;
      if (code !== 0) {
        reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${stderr.slice(-2000)}`));
        return;
      }
      const kb = Number(/__bench_maxrss_kb=(\d+)/.exec(stderr)?.[1] ?? 0);
      resolve({ ms, maxRssBytes: kb * 1024, stdout });
    });
  });
}

export interface ChildResult {
  ms: number;
  maxRssBytes: number;
  [k: string]: unknown;
}

/**
 * Run a bench child (`node --import tsx <script> ...args`) and parse its last stdout line as JSON.
 * With BENCH_CPU_PROF=<dir> each child writes a V8 CPU profile there (NODE_OPTIONS may not carry
 * --cpu-prof); summarize them with bench/profile-summary.ts.
 */
export async function runTsChild(script: string, args: string[], env: NodeJS.ProcessEnv, nodeArgs: string[] = []): Promise<ChildResult> {
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  const prof = process.env.BENCH_CPU_PROF;
  if (prof) nodeArgs = ['--cpu-prof', '--cpu-prof-dir', prof, ...nodeArgs];
  const { stdout } = await promisify(execFile)(process.execPath, [...nodeArgs, '--import', 'tsx', script, ...args], {
    env,
    maxBuffer: 16 << 20,
  });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as ChildResult;
}

/**
 * rclone pointed at an S3 endpoint purely by environment (no config file): remote `bench:`.
 * List version 1: s3rver's ListObjectsV2 pagination past 1000 keys is broken.
 */
export function rcloneEnv(s3: { endpoint: string; accessKeyId: string; secretAccessKey: string }): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.AWS_CA_BUNDLE;
  return {
    ...env,
    RCLONE_CONFIG: '/dev/null',
    RCLONE_CONFIG_BENCH_TYPE: 's3',
    RCLONE_CONFIG_BENCH_PROVIDER: 'Other',
    RCLONE_CONFIG_BENCH_ENDPOINT: s3.endpoint,
    RCLONE_CONFIG_BENCH_ACCESS_KEY_ID: s3.accessKeyId,
    RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY: s3.secretAccessKey,
    RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE: 'true',
    RCLONE_CONFIG_BENCH_LIST_VERSION: '1',
  };
}

/** Env for a Stowage child process: storage at the bench's radosgw (or its shaper), Redis/Postgres isolation. */
export function stowageEnv(
  s3: { endpoint: string; bucket: string; accessKeyId: string; secretAccessKey: string },
  extra: Record<string, string> = {},
): NodeJS.ProcessEnv {
  return {
    ...process.env,
    R2_ENDPOINT: s3.endpoint,
    R2_BUCKET: s3.bucket,
    R2_ACCESS_KEY_ID: s3.accessKeyId,
    R2_SECRET_ACCESS_KEY: s3.secretAccessKey,
    LOG_LEVEL: 'silent',
    ...extra,
  };
}

/** Generated data of `bytes` in `dir`: half random (incompressible), half text-like (compresses ~4×), in files of `fileBytes`. */
export async function generateMixed(dir: string, bytes: number, fileBytes = 8 * 1024 * 1024): Promise<number> {
  const { mkdir, writeFile } = await import('node:fs/promises');
  const { randomFillSync } = await import('node:crypto');
  const { join } = await import('node:path');
  await mkdir(dir, { recursive: true });
  let total = 0;
  let i = 0;
  const words = ['error', 'upload', 'artifact', 'export', 'const', 'function', 'return', 'await', 'import', 'module', 'stowage', 'worker'];
  const text = (n: number, seed: number): Buffer => {
    const lines: string[] = [];
    let len = 0;
    let x = seed * 2654435761;
    while (len < n) {
      x = (x * 1103515245 + 12345) >>> 0;
      const line = `${words[x % words.length]}_${x % 9973} = ${words[(x >>> 8) % words.length]}(${(x >>> 4) % 100000}, "${(x >>> 12).toString(16)}");\n`;
      lines.push(line);
      len += line.length;
    }
    return Buffer.from(lines.join('')).subarray(0, n);
  };
  // Four distinct text blocks, cycled: generating text is slow and deflate works per entry, so a
  // repeated block compresses no better than a fresh one.
  const blocks = new Map<number, Buffer>();
  while (total < bytes) {
    const n = Math.min(fileBytes, bytes - total);
    const random = i % 2 === 0;
    const block = () => {
      const seed = (i >> 1) % 4;
      if (!blocks.has(seed)) blocks.set(seed, text(fileBytes, seed + 1));
      return blocks.get(seed)!.subarray(0, n);
    };
    await writeFile(join(dir, random ? `blob-${i}.bin` : `source-${i}.js`), random ? randomFillSync(Buffer.allocUnsafe(n)) : block());
    total += n;
    i++;
  }
  return total;
}

/** One line per row, for a benchmark run on its own. */
export function printRows(rows: BenchRow[]): void {
  for (const r of rows) {
    const baseline = r.baseline ? `${r.baseline} | ` : '';
    console.log(
      `${r.what}\n  ${baseline}${r.stowage} | ${r.ratio} (goal ${r.goal}: ${r.pass === null ? 'no goal' : r.pass ? 'met' : 'MISSED'})${r.peakRss ? ` | ${r.peakRss}` : ''}`,
    );
  }
}

/**
 * `npx tsx bench/<name>.ts [--quick]`: when `moduleUrl` is the script node was started with, run
 * the benchmark, print its rows and exit.
 */
export async function runIfMain(moduleUrl: string, run: (argv: string[]) => Promise<BenchRow[]>): Promise<void> {
  const { pathToFileURL } = await import('node:url');
  if (!process.argv[1] || moduleUrl !== pathToFileURL(process.argv[1]).href) return;
  printRows(await run(process.argv));
  process.exit(0);
}

/** A benchmark's leftovers: its Redis keys under `prefix` and its Postgres schema. */
export async function dropBenchState(
  prefix: string,
  schema: string,
  databaseUrl = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
): Promise<void> {
  await cleanupPrefix(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', prefix);
  const { default: pg } = await import('pg');
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  } finally {
    await client.end();
  }
}
