/**
 * SHA-256 of an upload's parts and of the whole object, in a thread of its own.
 *
 * Each part is hashed twice: into the whole-object hash (sidecar, receipt) and on its own (its
 * checksum header, its SigV4 payload hash, its resume record, the check of a recorded part). A
 * resumed upload sends nothing while it regenerates and re-checks the parts already stored, so
 * there those two passes, run in turn with the zip on the main thread, set the pace: 280–350 MB/s
 * of stored data here, 410–600 MB/s with the hashing in this thread beside the zip (docs/performance.md,
 * "Resume after a crash"). Only resumed attempts use it (upload.ts): a fresh upload hashes as it
 * sends, on the main thread, and a thread would add its ~19 MB to every worker for no gain there.
 * A part's memory is transferred to the thread and back, not copied.
 *
 * One thread per process, shared by the uploads in it, started on first use and kept referenced
 * only while an answer is awaited, so an idle process exits as before.
 */
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { THREAD_ROLE, type HashRequest, type HashResponse } from './hash-thread.js';

/** The thread's entry file, next to this one: .ts under tsx and vitest, .js in dist/ (see hash-thread.ts). */
const THREAD_FILE = new URL(import.meta.url.endsWith('.ts') ? './hash-thread.ts' : './hash-thread.js', import.meta.url);

const EMPTY_SHA256 = createHash('sha256').digest('hex');

class HashThread {
  private readonly worker: Worker;
  private readonly waiting = new Map<number, { resolve: (r: HashResponse) => void; reject: (err: Error) => void }>();
  private nextSeq = 0;
  failure: Error | null = null;

  constructor() {
    // execArgv: [] keeps a parent's --import hooks (tsx) out of the thread: Node strips its .ts itself.
    this.worker = new Worker(THREAD_FILE, { workerData: THREAD_ROLE, execArgv: [] });
    this.worker.unref();
    this.worker.on('message', (m: HashResponse) => {
      const waiter = this.waiting.get(m.seq);
      this.waiting.delete(m.seq);
      if (this.waiting.size === 0) this.worker.unref();
      waiter?.resolve(m);
    });
    this.worker.on('error', (err) => this.fail(new Error(`the SHA-256 thread failed: ${err.message}`, { cause: err })));
    this.worker.on('exit', (code) => this.fail(new Error(`the SHA-256 thread exited (code ${code})`)));
  }

  ask(request: Exclude<HashRequest, { op: 'drop' }>, transfer: ArrayBuffer[] = []): Promise<HashResponse> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      if (this.waiting.size === 0) this.worker.ref();
      this.waiting.set(request.seq, { resolve, reject });
      this.worker.postMessage(request, transfer);
    });
  }

  tell(request: Extract<HashRequest, { op: 'drop' }>): void {
    if (!this.failure) this.worker.postMessage(request);
  }

  seq(): number {
    return this.nextSeq++;
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const waiter of this.waiting.values()) waiter.reject(this.failure);
    this.waiting.clear();
  }
}

let thread: HashThread | null = null;
let nextUpload = 0;

/** The process's hash thread; a new one after a failure (the failed one's uploads have failed with it). */
function hashThread(): HashThread {
  if (!thread || thread.failure) thread = new HashThread();
  return thread;
}

/**
 * Start the thread now if it is not running: a resumed upload calls this before it lists the
 * stored parts, so the thread's start-up (~60 ms compiled) overlaps that round trip.
 */
export function startHashThread(): void {
  hashThread();
}

/** The hashes of one upload attempt's parts, in order, and of the whole object. */
export class UploadHasher {
  private readonly upload = nextUpload++;
  private thread: HashThread | null = null;

  /**
   * Hash `part` into the whole and on its own. `part` must be the only view of its own
   * ArrayBuffer (Buffer.allocUnsafeSlow): that memory moves to the thread and `part` is empty
   * until it comes back as `data`. Parts are taken in call order.
   */
  async part(part: Buffer): Promise<{ sha256: string; data: Buffer }> {
    const memory = part.buffer;
    if (!(memory instanceof ArrayBuffer)) throw new TypeError('UploadHasher.part: a part must own an ArrayBuffer');
    this.thread ??= hashThread();
    const { byteOffset: offset, length } = part;
    const answer = await this.thread.ask({ op: 'part', seq: this.thread.seq(), upload: this.upload, buffer: memory, offset, length }, [
      memory,
    ]);
    return { sha256: answer.hex, data: Buffer.from(answer.buffer!, offset, length) };
  }

  /** The SHA-256 of every part so far, in order, hex. Ends the hasher. */
  async digest(): Promise<string> {
    const t = this.thread;
    if (!t) return EMPTY_SHA256;
    this.thread = null;
    return (await t.ask({ op: 'digest', seq: t.seq(), upload: this.upload })).hex;
  }

  /** Forget this upload's hash (it failed or was given up). */
  dispose(): void {
    this.thread?.tell({ op: 'drop', upload: this.upload });
    this.thread = null;
  }
}
