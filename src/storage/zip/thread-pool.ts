/**
 * The compression thread pool: when to use threads, how many, and a small pool that hands
 * batches of small files to compress-thread.ts and turns its results back into Prepared entries.
 *
 * Many small files are the common case (a web build has thousands). Going through the promise
 * fs API and async zlib costs ~0.3 ms of main-thread work per file, more than compressing it;
 * threads that read, CRC and deflate whole batches synchronously cut that to almost nothing and
 * use every core.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { THREAD_ROLE, type WorkItem, type WorkRequest, type WorkResponse, type WorkResult } from './compress-thread.js';
import { changedError, MAX_DEFLATE_RATIO, type Prepared, type Skip } from './read.js';
import { sourceError, type ZipEntry } from './scan.js';

/**
 * The thread's entry file, next to this one: compress-thread.ts when the sources run as .ts
 * (tsx, vitest; Node strips its types), compress-thread.js in the compiled build (dist/).
 */
const THREAD_FILE = new URL(import.meta.url.endsWith('.ts') ? './compress-thread.ts' : './compress-thread.js', import.meta.url);

/**
 * Threads pay off for many small files, where per-file overhead dominates; a thread costs ~50 ms
 * to start and ~30 MiB. Fewer or larger files do as well in this thread, where async zlib already
 * compresses on libuv's pool.
 */
export function useThreads(smallFiles: number, smallBytes: number): boolean {
  return smallFiles >= 256 && smallBytes / smallFiles <= 64 * 1024;
}

export function defaultThreads(): number {
  return Math.max(1, Math.min(4, availableParallelism() - 1));
}

export class CompressionPool {
  private readonly slots: { worker: Worker; busy: number }[] = [];
  private readonly waiting = new Map<number, { resolve: (r: WorkResult[]) => void; reject: (e: Error) => void }>();
  private nextId = 0;
  private failure: Error | null = null;
  private closing = false;
  private readonly level: number;

  constructor(size: number, level: number) {
    this.level = level;
    for (let i = 0; i < size; i++) {
      const slot = { worker: new Worker(THREAD_FILE, { workerData: THREAD_ROLE }), busy: 0 };
      slot.worker.on('message', (msg: WorkResponse) => {
        slot.busy--;
        const waiter = this.waiting.get(msg.id);
        this.waiting.delete(msg.id);
        waiter?.resolve(msg.results);
      });
      slot.worker.on('error', (err) => this.fail(err));
      slot.worker.on('exit', (code) => {
        if (!this.closing) this.fail(new Error(`a compression thread exited (code ${code})`));
      });
      this.slots.push(slot);
    }
  }

  /** Prepare `items`, each checked against the scan's identity for it, `root` and the hard-link policy. */
  run(items: WorkItem[], scope: { root: string; archiveHardLinks: boolean }): Promise<WorkResult[]> {
    if (this.failure) return Promise.reject(this.failure);
    const slot = this.slots.reduce((a, b) => (b.busy < a.busy ? b : a));
    slot.busy++;
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      const request: WorkRequest = { id, items, ...scope, level: this.level, maxRatio: MAX_DEFLATE_RATIO };
      slot.worker.postMessage(request);
    });
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const waiter of this.waiting.values()) waiter.reject(err);
    this.waiting.clear();
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}

export function fromWorker(entry: ZipEntry, r: WorkResult): Prepared | Skip {
  if ('skip' in r) return r;
  if ('code' in r) {
    if (['ENOENT', 'ESHORT'].includes(r.code)) throw changedError(entry, r.message);
    throw sourceError(Object.assign(new Error(r.message), { code: r.code }), entry.path);
  }
  return { method: r.method, crc: r.crc, usize: r.usize, data: Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength) };
}
