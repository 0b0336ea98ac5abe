/**
 * The body of a compression thread (started by thread-pool.ts): reads, CRCs and deflates whole
 * batches of small files synchronously and posts the results back, transferring their buffers.
 * It also holds `checkOpened`, the test every opened file passes before a byte of it is read, so
 * the thread and read.ts (this thread's caller, and the main-thread reads) share one copy of it.
 *
 * This file is a thread entry point, loaded by Node directly: as .ts under tsx and vitest (Node
 * strips the types, so only erasable syntax here), as .js from dist/. So it imports nothing but
 * `node:` builtins: a relative import would need a `.ts` specifier in one case and `.js` in the
 * other. The message types are exported for the pool (`import type`, erased at run time). It
 * serves messages only in a thread the pool started (marked by `THREAD_ROLE`), so importing it
 * elsewhere, in any thread, has no side effect.
 */
import { closeSync, constants, existsSync, fstatSync, openSync, readlinkSync, readSync, realpathSync } from 'node:fs';
import { sep } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { crc32, deflateRawSync } from 'node:zlib';

/** The pool's workerData: only a thread started with it serves compression requests. */
export const THREAD_ROLE = 'stowage-zip-compress';

/** Why an entry the scan listed is left out of the archive (`ZipSource.skipped`, `ZipOptions.onSkip`). */
export type SkipReason = 'symlink-outside' | 'symlink-dangling' | 'special-file' | 'hard-link' | 'changed-since-scan' | 'outside-root';

/** What an opened file must match: the scan's identity for it, and the scan's root and link policy. */
export interface OpenExpectation {
  dev: bigint;
  ino: bigint;
  /** Real path of the source (ZipSource.root). */
  root: string;
  archiveHardLinks: boolean;
}

/** One small file to prepare. */
export interface WorkItem {
  path: string;
  size: number;
  dev: bigint;
  ino: bigint;
  /** Store without trying to deflate (already-compressed extension). */
  stored: boolean;
}

export interface WorkRequest {
  id: number;
  items: WorkItem[];
  root: string;
  archiveHardLinks: boolean;
  level: number;
  /** Deflate only if the output is at most this fraction of the input. */
  maxRatio: number;
}

/**
 * Per item, in order: the prepared data, the reason it is left out, or the errno-style code of
 * why it could not be read.
 */
export type WorkResult =
  | { method: number; crc: number; usize: number; data: Uint8Array }
  | { skip: SkipReason }
  | { code: string; message: string };

export interface WorkResponse {
  id: number;
  results: WorkResult[];
}

const STORE = 0;
const DEFLATE = 8;
/** O_NOFOLLOW: a last component swapped for a link fails (ELOOP); O_NONBLOCK: a FIFO swapped in cannot block the open. */
export const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** Linux names the file behind every open descriptor here: where it is now, with no links in the path. */
export const PROC_FD = existsSync('/proc/self/fd');

export function isInside(root: string, path: string): boolean {
  return path === root || path.startsWith(root.endsWith(sep) ? root : root + sep);
}

/**
 * Where the file open on `fd` is now. On Linux the kernel's own path for the descriptor, so the
 * answer is about the file actually read, whatever was swapped on the way to it; elsewhere the
 * real path of `path`, which a swap after the open could still fool (the dev/ino check holds).
 */
export function openedPath(fd: number, path: string): string {
  return PROC_FD ? readlinkSync(`/proc/self/fd/${fd}`) : realpathSync(path);
}

/**
 * Whether the file open on `fd` may be archived: it must be the regular file the scan saw (same
 * device and inode), sit inside the source root now, and have one link unless hard links are
 * allowed. O_NOFOLLOW alone guards only the last path component: a folder swapped for a link to
 * /etc opens /etc's file under the same name. Checked on the descriptor that is then read, so no
 * later swap changes what was checked. Returns the reason to leave it out, or null.
 */
export function checkOpened(fd: number, path: string, expected: OpenExpectation): SkipReason | null {
  const st = fstatSync(fd, { bigint: true });
  if (!isInside(expected.root, openedPath(fd, path))) return 'outside-root';
  if (!st.isFile() || st.dev !== expected.dev || st.ino !== expected.ino) return 'changed-since-scan';
  if (st.nlink > 1n && !expected.archiveHardLinks) return 'hard-link';
  return null;
}

// Results are transferred, so each needs an ArrayBuffer of its own (never Buffer's shared pool).
function own(b: Buffer): Buffer {
  if (b.byteOffset === 0 && b.buffer.byteLength === b.length) return b;
  const c = Buffer.allocUnsafeSlow(b.length);
  b.copy(c);
  return c;
}

function prepare(item: WorkItem, request: WorkRequest): WorkResult {
  let fd: number;
  try {
    fd = openSync(item.path, OPEN_FLAGS);
  } catch (err) {
    // The last component is a link now: not the file the scan saw.
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') return { skip: 'changed-since-scan' };
    throw err;
  }
  let raw: Buffer;
  try {
    const skip = checkOpened(fd, item.path, {
      dev: item.dev,
      ino: item.ino,
      root: request.root,
      archiveHardLinks: request.archiveHardLinks,
    });
    if (skip) return { skip };
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
    const deflated = deflateRawSync(raw, { level: request.level });
    if (deflated.length <= raw.length * request.maxRatio) return { method: DEFLATE, crc, usize: raw.length, data: own(deflated) };
  }
  return { method: STORE, crc, usize: raw.length, data: raw };
}

const port = workerData === THREAD_ROLE ? parentPort : null;
port?.on('message', (request: WorkRequest) => {
  const results: WorkResult[] = [];
  const transfer: ArrayBuffer[] = [];
  for (const item of request.items) {
    let r: WorkResult;
    try {
      r = prepare(item, request);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      r = { code: e.code || 'EIO', message: e.message };
    }
    if ('data' in r) transfer.push(r.data.buffer as ArrayBuffer);
    results.push(r);
  }
  const response: WorkResponse = { id: request.id, results };
  port.postMessage(response, transfer);
});
