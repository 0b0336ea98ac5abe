/**
 * The body of a compression thread (started by thread-pool.ts): reads, CRCs and deflates whole
 * batches of small files synchronously and posts the results back, transferring their buffers.
 *
 * This file is a thread entry point, loaded by Node directly: as .ts under tsx and vitest (Node
 * strips the types, so only erasable syntax here), as .js from dist/. So it imports nothing but
 * `node:` builtins: a relative import would need a `.ts` specifier in one case and `.js` in the
 * other. The message types are exported for the pool (`import type`, erased at run time).
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { crc32, deflateRawSync } from 'node:zlib';

/** One small file to prepare. */
export interface WorkItem {
  path: string;
  size: number;
  /** Store without trying to deflate (already-compressed extension). */
  stored: boolean;
}

export interface WorkRequest {
  id: number;
  items: WorkItem[];
  level: number;
  /** Deflate only if the output is at most this fraction of the input. */
  maxRatio: number;
}

/** Per item, in order: the prepared data, or the errno-style code of why it could not be read. */
export type WorkResult = { method: number; crc: number; usize: number; data: Uint8Array } | { code: string; message: string };

export interface WorkResponse {
  id: number;
  results: WorkResult[];
}

const STORE = 0;
const DEFLATE = 8;
const FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

// Results are transferred, so each needs an ArrayBuffer of its own (never Buffer's shared pool).
function own(b: Buffer): Buffer {
  if (b.byteOffset === 0 && b.buffer.byteLength === b.length) return b;
  const c = Buffer.allocUnsafeSlow(b.length);
  b.copy(c);
  return c;
}

function prepare(item: WorkItem, level: number, maxRatio: number): WorkResult {
  const fd = openSync(item.path, FLAGS);
  let raw: Buffer;
  try {
    if (!fstatSync(fd).isFile()) return { code: 'ENOTREG', message: 'no longer a regular file' };
    raw = Buffer.allocUnsafeSlow(item.size);
    let filled = 0;
    while (filled < item.size) {
      const n = readSync(fd, raw, filled, item.size - filled, filled);
      if (n === 0) return { code: 'ESHORT', message: `expected ${item.size} bytes, read ${filled}` };
      filled += n;
    }
  } finally {
    closeSync(fd);
  }
  const crc = crc32(raw);
  if (!item.stored && raw.length > 0) {
    const deflated = deflateRawSync(raw, { level });
    if (deflated.length <= raw.length * maxRatio) return { method: DEFLATE, crc, usize: raw.length, data: own(deflated) };
  }
  return { method: STORE, crc, usize: raw.length, data: raw };
}

const port = parentPort;
if (!port) throw new Error('compress-thread.ts is a worker-thread entry point, not a module to import');

port.on('message', ({ id, items, level, maxRatio }: WorkRequest) => {
  const results: WorkResult[] = [];
  const transfer: ArrayBuffer[] = [];
  for (const item of items) {
    let r: WorkResult;
    try {
      r = prepare(item, level, maxRatio);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      r = { code: e.code || 'EIO', message: e.message };
    }
    if ('data' in r) transfer.push(r.data.buffer as ArrayBuffer);
    results.push(r);
  }
  const response: WorkResponse = { id, results };
  port.postMessage(response, transfer);
});
