/**
 * Reading one entry's data in this thread, and the store-or-deflate policy: which files count as
 * small (read whole, compressed before their header is written) and which are deflated at all.
 *
 * Every file is opened with O_NOFOLLOW and O_NONBLOCK and then checked on its descriptor
 * (compress-thread.ts's checkOpened): it must be the regular file the scan saw (device and
 * inode), sit inside the source root, and have one link unless hard links are allowed. One that
 * fails is left out and reported (a `Skip`), never read: that covers a file replaced after the
 * scan, and a folder swapped for a link that leads outside. A file that shrinks, vanishes or
 * changes content between the scan and the read fails with a retryable error rather than
 * producing a torn archive.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { extname } from 'node:path';
import { promisify } from 'node:util';
import { crc32, deflateRaw } from 'node:zlib';
import { StowageError } from '../../errors.js';
import { checkOpened, OPEN_FLAGS, type SkipReason } from './compress-thread.js';
import { DEFLATE, STORE } from './records.js';
import { sourceError, type ZipEntry, type ZipSource } from './scan.js';

/** Files up to this size are read whole and written without a data descriptor. */
const SMALL_FILE_BYTES = 1024 * 1024;
/** Read size for large files; also the readable's high-water mark. */
export const READ_CHUNK_BYTES = 1024 * 1024;
const PROBE_BYTES = 64 * 1024;
/** Deflate only if the (probe) output is at most this fraction of the input. */
export const MAX_DEFLATE_RATIO = 0.95;

/** Extensions whose content is already compressed: deflating them costs CPU and saves nothing. */
export const STORED_EXTENSIONS: ReadonlySet<string> = new Set([
  'png',
  'jpg',
  'jpeg',
  'gif',
  'webp',
  'avif',
  'heic',
  'heif',
  'jxl',
  'gz',
  'tgz',
  'zip',
  'jar',
  'war',
  'apk',
  'whl',
  'br',
  'zst',
  'zstd',
  '7z',
  'xz',
  'txz',
  'bz2',
  'tbz2',
  'lz4',
  'lzma',
  'rar',
  'woff',
  'woff2',
  'mp4',
  'm4v',
  'm4a',
  'mov',
  'mkv',
  'webm',
  'mp3',
  'ogg',
  'oga',
  'ogv',
  'opus',
  'aac',
  'flac',
  'pdf',
  'docx',
  'xlsx',
  'pptx',
  'odt',
  'ods',
  'odp',
  'epub',
]);

export function isStoredExtension(name: string): boolean {
  return STORED_EXTENSIONS.has(extname(name).slice(1).toLowerCase());
}

/** Small entries (directories and links too) are prepared whole; larger files stream. */
export function isSmall(entry: ZipEntry): boolean {
  return entry.type !== 'file' || entry.size <= SMALL_FILE_BYTES;
}

const EMPTY = Buffer.alloc(0);
const deflateRawAsync = promisify(deflateRaw);

export function changedError(entry: ZipEntry, detail: string): StowageError {
  // Not permanent: the build folder was still being written; a retry archives a settled copy.
  return new StowageError('STOWAGE_ERR_INTERNAL', `${entry.name} changed while it was being archived (${detail})`);
}

/** An entry left out at read time, and why. */
export interface Skip {
  skip: SkipReason;
}

/** What opened files are checked against besides their own entry: the scan's root and link policy. */
export type ReadScope = Pick<ZipSource, 'root' | 'archiveHardLinks'>;

/**
 * Open the file the scan saw as `entry`, without following a link and without blocking on a FIFO
 * swapped in; anything else found at its path is a Skip.
 */
export async function openFile(entry: ZipEntry, scope: ReadScope): Promise<FileHandle | Skip> {
  let handle: FileHandle;
  try {
    handle = await open(entry.path, OPEN_FLAGS);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') return { skip: 'changed-since-scan' }; // the last component is a link now
    if (code === 'ENOENT') throw changedError(entry, code);
    throw sourceError(err, entry.path);
  }
  let skip: SkipReason | null;
  try {
    skip = checkOpened(handle.fd, entry.path, { dev: entry.dev, ino: entry.ino, ...scope });
  } catch (err) {
    await handle.close();
    throw err;
  }
  if (skip) {
    await handle.close();
    return { skip };
  }
  return handle;
}

async function readWhole(entry: ZipEntry, scope: ReadScope): Promise<Buffer | Skip> {
  const handle = await openFile(entry, scope);
  if ('skip' in handle) return handle;
  try {
    const buf = Buffer.allocUnsafe(entry.size);
    let filled = 0;
    while (filled < entry.size) {
      const { bytesRead } = await handle.read(buf, filled, entry.size - filled, filled);
      if (bytesRead === 0) throw changedError(entry, `expected ${entry.size} bytes, read ${filled}`);
      filled += bytesRead;
    }
    return buf;
  } finally {
    await handle.close();
  }
}

export interface Prepared {
  method: number;
  crc: number;
  usize: number;
  data: Buffer;
}

export async function prepareSmall(entry: ZipEntry, level: number, scope: ReadScope): Promise<Prepared | Skip> {
  if (entry.type === 'directory') return { method: STORE, crc: 0, usize: 0, data: EMPTY };
  if (entry.type === 'symlink') {
    const data = Buffer.from(entry.linkTarget ?? '', 'utf8');
    return { method: STORE, crc: crc32(data), usize: data.length, data };
  }
  const raw = await readWhole(entry, scope);
  if ('skip' in raw) return raw;
  const crc = crc32(raw);
  if (raw.length === 0 || isStoredExtension(entry.name)) return { method: STORE, crc, usize: raw.length, data: raw };
  const deflated = await deflateRawAsync(raw, { level });
  return deflated.length <= raw.length * MAX_DEFLATE_RATIO
    ? { method: DEFLATE, crc, usize: raw.length, data: deflated }
    : { method: STORE, crc, usize: raw.length, data: raw };
}

export async function chooseMethod(entry: ZipEntry, handle: FileHandle, level: number): Promise<number> {
  if (isStoredExtension(entry.name)) return STORE;
  const probe = Buffer.allocUnsafe(Math.min(PROBE_BYTES, entry.size));
  const { bytesRead } = await handle.read(probe, 0, probe.length, 0);
  const sample = probe.subarray(0, bytesRead);
  const deflated = await deflateRawAsync(sample, { level });
  return deflated.length <= sample.length * MAX_DEFLATE_RATIO ? DEFLATE : STORE;
}

export async function crcOfFile(entry: ZipEntry, handle: FileHandle, signal: AbortSignal | undefined): Promise<number> {
  const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK_BYTES, entry.size));
  let crc = 0;
  let position = 0;
  while (position < entry.size) {
    signal?.throwIfAborted();
    const { bytesRead } = await handle.read(buf, 0, Math.min(buf.length, entry.size - position), position);
    if (bytesRead === 0) throw changedError(entry, `expected ${entry.size} bytes, read ${position}`);
    crc = crc32(buf.subarray(0, bytesRead), crc);
    position += bytesRead;
  }
  return crc;
}
