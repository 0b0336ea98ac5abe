/**
 * Shared machinery of the chaos suite: Stowage roles as separate OS processes through the CLI
 * (`node dist/cli/main.js …`, built by test/setup/build.ts), their captured output, configured secrets that must never
 * show up in that output, a radosgw bucket reached with credentials of the scenario's own, and the
 * run summary.
 *
 * The workers are other processes and this (test) process serves fault proxies, so nothing here
 * may block the event loop (no execFileSync/spawnSync).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { expect, inject } from 'vitest';
import { CLI_MAIN } from '../helpers/cli.js';
import { startS3, type TestS3 } from '../helpers/s3.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const SUMMARY_FILE = `${ROOT}test-output/chaos-summary.json`;

/** Secrets configured for every process of a scenario; none may appear in what they print. */
export interface Secrets {
  accessKeyId: string;
  secretAccessKey: string;
  dbPassword: string;
  authSecret: string;
}

export function makeSecrets(): Secrets {
  return {
    accessKeyId: `AKCHAOS${randomBytes(6).toString('hex').toUpperCase()}`,
    secretAccessKey: `sk-${randomBytes(18).toString('base64url')}`,
    dbPassword: `dbpw-${randomBytes(9).toString('hex')}`,
    authSecret: `as-${randomBytes(24).toString('hex')}`,
  };
}

/** A Postgres URL carrying the scenario's password (the local server trusts loopback, so it is unused). */
export function withPassword(url: string, password: string, port?: number): string {
  const u = new URL(url);
  if (!u.username) u.username = 'postgres';
  u.password = password;
  if (port !== undefined) u.port = String(port);
  return u.toString();
}

/** `radosgw-admin …` against the run's radosgw; its JSON answer, parsed. */
async function radosgwAdmin(args: string[]): Promise<unknown> {
  const { stdout } = await promisify(execFile)('radosgw-admin', args, { env: { ...process.env, CEPH_CONF: inject('rgw').cephConf } });
  return stdout.trim() ? JSON.parse(stdout) : null;
}

/**
 * A bucket of its own on the run's radosgw, reached with the scenario's own key pair (the run's
 * key is in scripts/rgw.sh, useless as a leak probe): the pair is added to the bucket owner's user
 * for the scenario and removed again by `close()`. radosgw checks every signature, so the
 * scenario's processes really authenticate with this pair. `client` keeps the run's key.
 */
export async function startChaosS3(bucket: string, secrets: Secrets): Promise<TestS3> {
  const s3 = await startS3(bucket);
  try {
    const owner = (await radosgwAdmin(['user', 'info', `--access-key=${s3.accessKeyId}`])) as { user_id: string };
    await radosgwAdmin([
      'key',
      'create',
      `--uid=${owner.user_id}`,
      '--key-type=s3',
      `--access-key=${secrets.accessKeyId}`,
      `--secret-key=${secrets.secretAccessKey}`,
    ]);
    return {
      ...s3,
      accessKeyId: secrets.accessKeyId,
      secretAccessKey: secrets.secretAccessKey,
      async close() {
        try {
          await s3.close();
        } finally {
          await radosgwAdmin(['key', 'rm', `--uid=${owner.user_id}`, '--key-type=s3', `--access-key=${secrets.accessKeyId}`]);
        }
      },
    };
  } catch (err) {
    await s3.close();
    throw err;
  }
}

export interface RoleProcess {
  name: string;
  child: ChildProcess;
  pid: number;
  /** True once it printed its ready text. */
  ready: boolean;
  /** Resolves when the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Spawns CLI processes and keeps everything they print (stdout and stderr) in `output`, so a
 * scenario can grep it at the end.
 */
export class ProcessGroup {
  readonly output: string[] = [];
  readonly processes: RoleProcess[] = [];
  constructor(private readonly baseEnv: Record<string, string>) {}

  /**
   * Start `stowage <args…>`; resolves once a line of its output contains `readyText`.
   * `env` adds to (and overrides) the group's environment.
   */
  start(
    name: string,
    args: string[],
    options: { env?: Record<string, string>; readyText?: string | null; timeoutMs?: number } = {},
  ): Promise<RoleProcess> {
    const readyText = options.readyText === undefined ? 'workers started' : options.readyText;
    const child = spawn(process.execPath, [CLI_MAIN, ...args], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...this.baseEnv, ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    const proc: RoleProcess = { name, child, pid: child.pid!, exited, ready: false };
    this.processes.push(proc);
    return new Promise((resolve, reject) => {
      let ready = false;
      const timer = setTimeout(
        () => reject(new Error(`${name} not ready after ${options.timeoutMs ?? 60_000} ms`)),
        options.timeoutMs ?? 60_000,
      );
      const onData = (stream: string) => (d: Buffer) => {
        const text = d.toString();
        this.output.push(`[${name} ${stream}] ${text}`);
        if (process.env.CHAOS_VERBOSE) process.stderr.write(`[${name}] ${text}`);
        if (!ready && readyText !== null && text.includes(readyText)) {
          ready = true;
          proc.ready = true;
          clearTimeout(timer);
          resolve(proc);
        }
      };
      child.stdout!.on('data', onData('out'));
      child.stderr!.on('data', onData('err'));
      if (readyText === null) {
        // The caller checks readiness its own way.
        ready = true;
        clearTimeout(timer);
        resolve(proc);
      }
      void exited.then(({ code, signal }) => {
        if (!ready) {
          clearTimeout(timer);
          reject(new Error(`${name} exited before it was ready (${code ?? signal}):\n${this.tail(name)}`));
        }
      });
    });
  }

  /** The last lines a process printed (for failure messages). */
  tail(name: string, lines = 30): string {
    return this.output
      .filter((l) => l.startsWith(`[${name} `))
      .join('')
      .split('\n')
      .slice(-lines)
      .join('\n');
  }

  alive(): RoleProcess[] {
    return this.processes.filter((p) => p.child.exitCode === null && p.child.signalCode === null);
  }

  async kill(proc: RoleProcess, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    proc.child.kill(signal);
    await proc.exited;
  }

  /** SIGTERM everything still running (bounded), then SIGKILL what remains. */
  async stopAll(timeoutMs = 20_000): Promise<void> {
    const alive = this.alive();
    for (const p of alive) p.child.kill('SIGTERM');
    const deadline = new Promise((r) => setTimeout(r, timeoutMs).unref());
    await Promise.race([Promise.all(alive.map((p) => p.exited)), deadline]);
    for (const p of this.alive()) p.child.kill('SIGKILL');
    await Promise.all(alive.map((p) => p.exited));
  }

  /** Write everything printed to test-output/chaos-logs/<name>.log (kept for reading after a run). */
  async save(name: string): Promise<string> {
    const file = `${ROOT}test-output/chaos-logs/${name}.log`;
    await mkdir(`${ROOT}test-output/chaos-logs`, { recursive: true });
    await writeFile(file, this.text());
    return file;
  }

  /** Everything printed, one string. */
  text(): string {
    return this.output.join('');
  }
}

/** No configured secret appears in what the processes printed. */
export function expectNoSecrets(output: string, secrets: Secrets): { bytesScanned: number } {
  for (const [name, value] of Object.entries(secrets)) {
    expect(output.includes(value), `${name} appears in the captured process output`).toBe(false);
  }
  return { bytesScanned: Buffer.byteLength(output) };
}

export async function waitUntil(what: string, check: () => Promise<boolean> | boolean, timeoutMs: number, everyMs = 250): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Merge one scenario's figures into test-output/chaos-summary.json (files run one at a time). */
export async function recordSummary(scenario: string, figures: Record<string, unknown>): Promise<void> {
  await mkdir(`${ROOT}test-output`, { recursive: true });
  let summary: { scenarios: Record<string, unknown>; updatedAt?: string } = { scenarios: {} };
  try {
    summary = JSON.parse(await readFile(SUMMARY_FILE, 'utf8')) as typeof summary;
  } catch {
    // first scenario of the run
  }
  summary.scenarios[scenario] = { ...figures, at: new Date().toISOString() };
  summary.updatedAt = new Date().toISOString();
  await writeFile(SUMMARY_FILE, `${JSON.stringify(summary, null, 2)}\n`);
  process.stdout.write(`\n[chaos] ${scenario}: ${JSON.stringify(figures)}\n`);
}
