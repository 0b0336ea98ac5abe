/**
 * Worker processes as separate OS processes: SIGTERM lets the active job finish; a SIGKILLed
 * worker's job is finished by another process once its lock expires.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProducer, type Producer } from '../../src/producers/index.js';
import { migrate } from '../../src/db/migrate.js';
import { DATABASE_URL, isolate, REDIS_URL } from '../helpers/isolation.js';
import { standInResult } from '../helpers/export-data.js';

const iso = isolate('shutdown');
const fixture = fileURLToPath(new URL('../fixtures/worker-process.ts', import.meta.url));
let producer: Producer;
const children: ChildProcess[] = [];

function startWorker(env: Record<string, string> = {}): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', fixture], {
    env: {
      ...process.env,
      REDIS_URL,
      DATABASE_URL,
      STOWAGE_PREFIX: iso.prefix,
      STOWAGE_DB_SCHEMA: iso.schema,
      LOG_LEVEL: process.env.WORKER_LOG_LEVEL ?? 'warn',
      // Short locks so a dead worker's job is seen as stalled within ~3 s.
      STOWAGE_LOCK_DURATION_MS: '2000',
      STOWAGE_STALLED_INTERVAL_MS: '1000',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(child);
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (process.env.WORKER_LOG_LEVEL) process.stderr.write(d);
      if (out.includes('ready')) resolve(child);
    });
    child.once('exit', (code) => reject(new Error(`worker exited early with ${code}`)));
  });
}

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

async function waitForActive(jobId: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while ((await producer.queue('export').getJobState(jobId)) !== 'active') {
    if (Date.now() > deadline) throw new Error(`job ${jobId} never became active`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  await migrate(iso.config());
  producer = createProducer(iso.config());
});
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await producer.close();
  await iso.cleanup();
});

describe('worker process lifecycle', () => {
  it('SIGTERM during a long job lets it finish, then exits 0', async () => {
    const worker = await startWorker();
    const { jobId } = await producer.export({ module: 'm', userId: 'u', format: 'json', records: [{ sleepMs: 2500, t: 'term' }] });
    await waitForActive(jobId);
    worker.kill('SIGTERM');
    const result = await producer.waitFor('export', jobId, 20_000);
    expect(result).toEqual(standInResult(`${worker.pid}@1`));
    expect(await exited(worker)).toEqual({ code: 0, signal: null });
  });

  it("a SIGKILLed worker's job is completed by another process", async () => {
    const a = await startWorker();
    const { jobId } = await producer.export({ module: 'm', userId: 'u', format: 'json', records: [{ sleepMs: 3000, t: 'kill' }] });
    await waitForActive(jobId);
    a.kill('SIGKILL');
    expect(await exited(a)).toEqual({ code: null, signal: 'SIGKILL' });
    // The job is still 'active' under A's lock; B must detect the stall and take it over.
    expect(await producer.queue('export').getJobState(jobId)).toBe('active');
    const b = await startWorker();
    const result = await producer.waitFor('export', jobId, 30_000);
    expect(result).toMatchObject({ id: expect.stringMatching(new RegExp(`^${b.pid}@`)) });
    b.kill('SIGTERM');
    expect((await exited(b)).code).toBe(0);
  });
});
