/**
 * A streaming zip writer for a folder (or a single file), written for this pipeline rather than
 * wrapped around archiver: it needs per-entry store/deflate choices, reads and compresses several
 * small files at once (zlib runs on libuv's thread pool, so that uses every core), keeps memory
 * bounded whatever the archive size, and its output is deterministic, so a rerun uploads the very
 * same bytes.
 *
 * Format choices (APPNOTE 6.3.x):
 * - Entries sorted by path; directories are entries of their own (empty folders survive), names
 *   are UTF-8 (flag bit 11), `/`-separated, relative to the source.
 * - Unix mode in the high 16 bits of the external attributes (made-by = Unix), so `unzip`
 *   restores permissions and recreates symlinks.
 * - Modification time as a DOS time in UTC plus the 0x5455 extended timestamp (exact UTC seconds),
 *   so output does not depend on the worker's time zone and `unzip` restores the right mtime.
 * - Files up to SMALL_FILE_BYTES are read whole, compressed off the main thread, and written with
 *   their sizes and CRC in the local header. Larger files stream in 1 MiB reads: deflated ones
 *   with a data descriptor (flag bit 3) after their data, stored ones after a CRC pre-pass so
 *   their local header is complete (streaming readers reject stored entries with a descriptor).
 * - Already-compressed formats (by extension) are stored. Anything else is deflated only if it
 *   shrinks: small files by their real deflated size, large ones by deflating a 64 KiB probe.
 * - Zip64 where needed: entries whose size may pass 4 GiB carry Zip64 sizes in the local header
 *   and an 8-byte-size data descriptor; offsets past 4 GiB and more than 65,535 entries get Zip64
 *   central records and the Zip64 end-of-central-directory record.
 *
 * Symlinks are never followed. A link that resolves (through any chain of links) to a path inside
 * the source is stored as a link entry whose target is rewritten relative to the link, so it stays
 * valid wherever the archive is extracted; a link that resolves outside, or is dangling, is left
 * out and reported in `ZipSource.skipped`. Files are opened with O_NOFOLLOW and checked with fstat,
 * so a file swapped for a link (or a FIFO) after the scan is not read either. Sockets, FIFOs and
 * devices are skipped.
 */
import { constants, lstatSync, readdirSync, realpathSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { open, realpath, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, extname, join, relative, sep } from 'node:path';
import { Readable, Transform, pipeline } from 'node:stream';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';
import { crc32, createDeflateRaw, deflateRaw } from 'node:zlib';
import { PermanentError, StowageError } from '../errors.js';

export type ZipEntryType = 'file' | 'directory' | 'symlink';

export interface ZipEntry {
  /** Path inside the archive: `/`-separated, relative; directories end with `/`. */
  name: string;
  /** Absolute path on disk. */
  path: string;
  type: ZipEntryType;
  /** st_mode: file type and permission bits. */
  mode: number;
  /** Content bytes: the file size, or the byte length of a link's target. */
  size: number;
  mtimeMs: number;
  /** For symlinks: the target as stored, relative to the link's folder. */
  linkTarget?: string;
}

export interface SkippedEntry {
  name: string;
  reason: 'symlink-outside' | 'symlink-dangling' | 'special-file';
}

/** The result of scanning a source: what the archive will hold, from one stat walk. */
export interface ZipSource {
  /** Real path of the source. */
  root: string;
  kind: 'directory' | 'file';
  /** Sorted by name. */
  entries: ZipEntry[];
  skipped: SkippedEntry[];
  /** Sum of regular file sizes (st_size; a sparse file counts its apparent size). */
  totalBytes: number;
  fileCount: number;
}

export interface ZipOptions {
  /** Deflate level for compressible entries (1-9). Default 4: within about 1 % of level 6's size on source text (bench/artifact), noticeably faster. */
  level?: number;
  signal?: AbortSignal;
  /** Called as source bytes are read, with the running total. */
  onProgress?: (bytesRead: number) => void;
  /** Write Zip64 records for every entry and the end record even when not needed (tests, strict consumers). Default false. */
  forceZip64?: boolean;
  /**
   * Threads that read, CRC and compress small files. Default: one less than the CPUs (the main
   * thread hashes and uploads), at least 1, at most 4; used only for many small files (see
   * useThreads). 0 = all in this thread.
   */
  threads?: number;
}

/** Files up to this size are read whole and written without a data descriptor. */
const SMALL_FILE_BYTES = 1024 * 1024;
/** Bytes of small files read ahead (and compressed) while earlier entries are written. */
const PREFETCH_BYTES = 16 * 1024 * 1024;
/** Small entries read ahead at most (a bound for trees of many tiny files). */
const PREFETCH_ENTRIES = 1024;
/** Small files go to a compression thread in batches of this many files or bytes. */
const BATCH_FILES = 64;
const BATCH_BYTES = 2 * 1024 * 1024;
/** Read size for large files; also the readable's high-water mark. */
export const READ_CHUNK_BYTES = 1024 * 1024;
const PROBE_BYTES = 64 * 1024;
/** Deflate only if the (probe) output is at most this fraction of the input. */
const MAX_DEFLATE_RATIO = 0.95;
/** The scan yields to the event loop after this many synchronous syscalls. */
const SCAN_SLICE = 256;

/** Extensions whose content is already compressed: deflating them costs CPU and saves nothing. */
export const STORED_EXTENSIONS: ReadonlySet<string> = new Set([
  'png', 'jpg', 'jpeg', 'gif', 'webp', 'avif', 'heic', 'heif', 'jxl',
  'gz', 'tgz', 'zip', 'jar', 'war', 'apk', 'whl', 'br', 'zst', 'zstd', '7z', 'xz', 'txz', 'bz2', 'tbz2', 'lz4', 'lzma', 'rar',
  'woff', 'woff2',
  'mp4', 'm4v', 'm4a', 'mov', 'mkv', 'webm', 'mp3', 'ogg', 'oga', 'ogv', 'opus', 'aac', 'flac',
  'pdf', 'docx', 'xlsx', 'pptx', 'odt', 'ods', 'odp', 'epub',
]);

export function isStoredExtension(name: string): boolean {
  return STORED_EXTENSIONS.has(extname(name).slice(1).toLowerCase());
}

// ---------------------------------------------------------------------------------------------
// Scan

function isInside(root: string, path: string): boolean {
  return path === root || path.startsWith(root.endsWith(sep) ? root : root + sep);
}

function sourceError(err: unknown, what: string): Error {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'ENOTDIR') return new PermanentError(`${what} does not exist`, { cause: err });
  if (code === 'EACCES' || code === 'EPERM') return new PermanentError(`${what} is not readable (${code})`, { cause: err });
  return err as Error;
}

/**
 * Walk `source` (lstat only; no file is read) and list what the archive will hold. Cheap enough to
 * run before deciding whether to archive at all.
 */
export async function scanSource(source: string, options: { signal?: AbortSignal } = {}): Promise<ZipSource> {
  let root: string;
  let rootStat: Awaited<ReturnType<typeof stat>>;
  try {
    root = await realpath(source);
    rootStat = await stat(root);
  } catch (err) {
    throw sourceError(err, source);
  }
  if (rootStat.isFile()) {
    const name = basename(root);
    return {
      root,
      kind: 'file',
      entries: [{ name, path: root, type: 'file', mode: rootStat.mode, size: rootStat.size, mtimeMs: rootStat.mtimeMs }],
      skipped: [],
      totalBytes: rootStat.size,
      fileCount: 1,
    };
  }
  if (!rootStat.isDirectory()) throw new PermanentError(`${source} is neither a directory nor a regular file`);

  // Synchronous lstat/readdir in slices, yielding to the event loop between them: ~10x faster
  // than the promise API for trees of thousands of files, without holding the loop for long.
  const entries: ZipEntry[] = [];
  const skipped: SkippedEntry[] = [];
  let totalBytes = 0;
  let fileCount = 0;
  let calls = 0;
  const tick = async () => {
    if (++calls % SCAN_SLICE === 0) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      options.signal?.throwIfAborted();
    }
  };
  const dirs: { abs: string; rel: string }[] = [{ abs: root, rel: '' }];
  try {
    while (dirs.length) {
      const { abs: absDir, rel: relDir } = dirs.pop()!;
      await tick();
      for (const n of readdirSync(absDir)) {
        await tick();
        const abs = join(absDir, n);
        const name = relDir ? `${relDir}/${n}` : n;
        const st = lstatSync(abs);
        if (st.isDirectory()) {
          entries.push({ name: `${name}/`, path: abs, type: 'directory', mode: st.mode, size: 0, mtimeMs: st.mtimeMs });
          dirs.push({ abs, rel: name });
        } else if (st.isFile()) {
          entries.push({ name, path: abs, type: 'file', mode: st.mode, size: st.size, mtimeMs: st.mtimeMs });
          totalBytes += st.size;
          fileCount++;
        } else if (st.isSymbolicLink()) {
          let resolved: string;
          try {
            resolved = realpathSync(abs);
          } catch {
            skipped.push({ name, reason: 'symlink-dangling' });
            continue;
          }
          if (!isInside(root, resolved)) {
            skipped.push({ name, reason: 'symlink-outside' });
            continue;
          }
          // The stored target is the resolved path made relative to the link, so a target like
          // `../../root/b` cannot point elsewhere once extracted under another folder name.
          const linkTarget = relative(dirname(abs), resolved).split(sep).join('/') || '.';
          entries.push({ name, path: abs, type: 'symlink', mode: st.mode, size: Buffer.byteLength(linkTarget), mtimeMs: st.mtimeMs, linkTarget });
        } else {
          skipped.push({ name, reason: 'special-file' });
        }
      }
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EACCES') throw sourceError(err, `a path under ${source}`);
    throw err;
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  skipped.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { root, kind: 'directory', entries, skipped, totalBytes, fileCount };
}

// ---------------------------------------------------------------------------------------------
// Records

const STORE = 0;
const DEFLATE = 8;
const U32_MAX = 0xffffffff;
const U16_MAX = 0xffff;
const FLAG_DATA_DESCRIPTOR = 0x0008;
const FLAG_UTF8 = 0x0800;
/** Made by: Unix (3), spec 4.5. */
const VERSION_MADE_BY = (3 << 8) | 45;
const EMPTY = Buffer.alloc(0);

interface DosTime {
  time: number;
  date: number;
  /** Unix seconds for the 0x5455 field (unsigned 32-bit, as Info-ZIP reads it). */
  unix: number;
}

function dosTime(mtimeMs: number): DosTime {
  const d = new Date(mtimeMs);
  let year = d.getUTCFullYear();
  let time: number;
  let date: number;
  if (year < 1980) {
    time = 0;
    date = (1 << 5) | 1;
  } else {
    if (year > 2107) year = 2107;
    time = (d.getUTCHours() << 11) | (d.getUTCMinutes() << 5) | (d.getUTCSeconds() >> 1);
    date = ((year - 1980) << 9) | ((d.getUTCMonth() + 1) << 5) | d.getUTCDate();
  }
  const unix = Math.min(Math.max(Math.floor(mtimeMs / 1000), 0), U32_MAX);
  return { time, date, unix };
}

function deflateFlags(method: number, level: number): number {
  if (method !== DEFLATE) return 0;
  // Bits 1-2 describe the deflate option; only informational (zipinfo shows defS/defF/defX).
  if (level <= 1) return 0x0006;
  if (level === 2) return 0x0004;
  if (level >= 8) return 0x0002;
  return 0;
}

interface EntryRecord {
  nameBuf: Buffer;
  flags: number;
  method: number;
  versionNeeded: number;
  dos: DosTime;
  crc: number;
  csize: number;
  usize: number;
  offset: number;
  externalAttr: number;
  /** The local header carried Zip64 sizes; the central record then does too. */
  zip64Sizes: boolean;
}

function extendedTimestamp(unix: number): Buffer {
  const b = Buffer.alloc(9);
  b.writeUInt16LE(0x5455, 0);
  b.writeUInt16LE(5, 2);
  b.writeUInt8(1, 4); // mtime present
  b.writeUInt32LE(unix, 5);
  return b;
}

function zip64Extra(values: number[]): Buffer {
  const b = Buffer.alloc(4 + 8 * values.length);
  b.writeUInt16LE(0x0001, 0);
  b.writeUInt16LE(8 * values.length, 2);
  values.forEach((v, i) => b.writeBigUInt64LE(BigInt(v), 4 + 8 * i));
  return b;
}

function localHeader(r: EntryRecord, streaming: boolean): Buffer {
  const extras: Buffer[] = [];
  let crc = r.crc;
  let csize = r.csize;
  let usize = r.usize;
  if (streaming) crc = csize = usize = 0;
  if (r.zip64Sizes) {
    // Zip64 local header: both sizes in the extra field (zero when streaming: the data descriptor
    // has them), 0xFFFFFFFF in the fixed fields.
    extras.push(zip64Extra([usize, csize]));
    csize = usize = U32_MAX;
  }
  extras.push(extendedTimestamp(r.dos.unix));
  const extra = Buffer.concat(extras);
  const h = Buffer.alloc(30);
  h.writeUInt32LE(0x04034b50, 0);
  h.writeUInt16LE(r.versionNeeded, 4);
  h.writeUInt16LE(r.flags, 6);
  h.writeUInt16LE(r.method, 8);
  h.writeUInt16LE(r.dos.time, 10);
  h.writeUInt16LE(r.dos.date, 12);
  h.writeUInt32LE(crc >>> 0, 14);
  h.writeUInt32LE(csize, 18);
  h.writeUInt32LE(usize, 22);
  h.writeUInt16LE(r.nameBuf.length, 26);
  h.writeUInt16LE(extra.length, 28);
  return Buffer.concat([h, r.nameBuf, extra]);
}

function dataDescriptor(r: EntryRecord): Buffer {
  if (r.zip64Sizes) {
    const b = Buffer.alloc(24);
    b.writeUInt32LE(0x08074b50, 0);
    b.writeUInt32LE(r.crc >>> 0, 4);
    b.writeBigUInt64LE(BigInt(r.csize), 8);
    b.writeBigUInt64LE(BigInt(r.usize), 16);
    return b;
  }
  const b = Buffer.alloc(16);
  b.writeUInt32LE(0x08074b50, 0);
  b.writeUInt32LE(r.crc >>> 0, 4);
  b.writeUInt32LE(r.csize, 8);
  b.writeUInt32LE(r.usize, 12);
  return b;
}

function centralHeader(r: EntryRecord, forceZip64: boolean): Buffer {
  const big: number[] = [];
  let usize = r.usize;
  let csize = r.csize;
  let offset = r.offset;
  if (forceZip64 || r.zip64Sizes || usize >= U32_MAX) {
    big.push(usize);
    usize = U32_MAX;
  }
  if (forceZip64 || r.zip64Sizes || csize >= U32_MAX) {
    big.push(csize);
    csize = U32_MAX;
  }
  if (forceZip64 || offset >= U32_MAX) {
    big.push(offset);
    offset = U32_MAX;
  }
  const ut = Buffer.alloc(9);
  ut.writeUInt16LE(0x5455, 0);
  ut.writeUInt16LE(5, 2);
  ut.writeUInt8(1, 4);
  ut.writeUInt32LE(r.dos.unix, 5);
  const extra = big.length ? Buffer.concat([zip64Extra(big), ut]) : ut;
  const h = Buffer.alloc(46);
  h.writeUInt32LE(0x02014b50, 0);
  h.writeUInt16LE(VERSION_MADE_BY, 4);
  h.writeUInt16LE(big.length ? 45 : r.versionNeeded, 6);
  h.writeUInt16LE(r.flags, 8);
  h.writeUInt16LE(r.method, 10);
  h.writeUInt16LE(r.dos.time, 12);
  h.writeUInt16LE(r.dos.date, 14);
  h.writeUInt32LE(r.crc >>> 0, 16);
  h.writeUInt32LE(csize, 20);
  h.writeUInt32LE(usize, 24);
  h.writeUInt16LE(r.nameBuf.length, 28);
  h.writeUInt16LE(extra.length, 30);
  h.writeUInt16LE(0, 32); // comment length
  h.writeUInt16LE(0, 34); // disk number start
  h.writeUInt16LE(0, 36); // internal attributes
  h.writeUInt32LE(r.externalAttr >>> 0, 38);
  h.writeUInt32LE(offset, 42);
  return Buffer.concat([h, r.nameBuf, extra]);
}

function endRecords(count: number, cdOffset: number, cdSize: number, forceZip64: boolean): Buffer {
  const zip64 = forceZip64 || count > U16_MAX || cdOffset >= U32_MAX || cdSize >= U32_MAX;
  const parts: Buffer[] = [];
  if (zip64) {
    const rec = Buffer.alloc(56);
    rec.writeUInt32LE(0x06064b50, 0);
    rec.writeBigUInt64LE(44n, 4); // size of the rest of this record
    rec.writeUInt16LE(VERSION_MADE_BY, 12);
    rec.writeUInt16LE(45, 14);
    rec.writeUInt32LE(0, 16); // this disk
    rec.writeUInt32LE(0, 20); // disk with the central directory
    rec.writeBigUInt64LE(BigInt(count), 24);
    rec.writeBigUInt64LE(BigInt(count), 32);
    rec.writeBigUInt64LE(BigInt(cdSize), 40);
    rec.writeBigUInt64LE(BigInt(cdOffset), 48);
    const locator = Buffer.alloc(20);
    locator.writeUInt32LE(0x07064b50, 0);
    locator.writeUInt32LE(0, 4);
    locator.writeBigUInt64LE(BigInt(cdOffset + cdSize), 8); // where the Zip64 record starts
    locator.writeUInt32LE(1, 16); // total disks
    parts.push(rec, locator);
  }
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(0, 4);
  eocd.writeUInt16LE(0, 6);
  eocd.writeUInt16LE(zip64 ? U16_MAX : count, 8);
  eocd.writeUInt16LE(zip64 ? U16_MAX : count, 10);
  eocd.writeUInt32LE(zip64 && cdSize >= U32_MAX ? U32_MAX : cdSize, 12);
  eocd.writeUInt32LE(zip64 ? U32_MAX : cdOffset, 16);
  eocd.writeUInt16LE(0, 20);
  parts.push(eocd);
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------------------------------------
// Reading

const deflateRawAsync = promisify(deflateRaw);

function changedError(entry: ZipEntry, detail: string): StowageError {
  // Not permanent: the build folder was still being written; a retry archives a settled copy.
  return new StowageError('STOWAGE_ERR_INTERNAL', `${entry.name} changed while it was being archived (${detail})`);
}

/** Open a regular file without following a link and without blocking on a FIFO swapped in. */
async function openFile(entry: ZipEntry): Promise<FileHandle> {
  let handle: FileHandle;
  try {
    handle = await open(entry.path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP' || code === 'ENOENT') throw changedError(entry, code);
    throw sourceError(err, entry.path);
  }
  const st = await handle.stat();
  if (!st.isFile()) {
    await handle.close();
    throw changedError(entry, 'no longer a regular file');
  }
  return handle;
}

async function readWhole(entry: ZipEntry): Promise<Buffer> {
  const handle = await openFile(entry);
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

interface Prepared {
  method: number;
  crc: number;
  usize: number;
  data: Buffer;
}

async function prepareSmall(entry: ZipEntry, level: number): Promise<Prepared> {
  if (entry.type === 'directory') return { method: STORE, crc: 0, usize: 0, data: EMPTY };
  if (entry.type === 'symlink') {
    const data = Buffer.from(entry.linkTarget ?? '', 'utf8');
    return { method: STORE, crc: crc32(data), usize: data.length, data };
  }
  const raw = await readWhole(entry);
  const crc = crc32(raw);
  if (raw.length === 0 || isStoredExtension(entry.name)) return { method: STORE, crc, usize: raw.length, data: raw };
  const deflated = await deflateRawAsync(raw, { level });
  return deflated.length <= raw.length * MAX_DEFLATE_RATIO
    ? { method: DEFLATE, crc, usize: raw.length, data: deflated }
    : { method: STORE, crc, usize: raw.length, data: raw };
}

async function chooseMethod(entry: ZipEntry, handle: FileHandle, level: number): Promise<number> {
  if (isStoredExtension(entry.name)) return STORE;
  const probe = Buffer.allocUnsafe(Math.min(PROBE_BYTES, entry.size));
  const { bytesRead } = await handle.read(probe, 0, probe.length, 0);
  const sample = probe.subarray(0, bytesRead);
  const deflated = await deflateRawAsync(sample, { level });
  return deflated.length <= sample.length * MAX_DEFLATE_RATIO ? DEFLATE : STORE;
}

async function crcOfFile(entry: ZipEntry, handle: FileHandle, signal: AbortSignal | undefined): Promise<number> {
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

// ---------------------------------------------------------------------------------------------
// Compression threads
//
// Many small files are the common case (a web build has thousands). Going through the promise
// fs API and async zlib costs ~0.3 ms of main-thread work per file, more than compressing it;
// threads that read, CRC and deflate whole batches synchronously cut that to almost nothing and
// use every core. The worker is inline CommonJS (no TypeScript, no loader), so it runs the same
// under tsx, vitest and the compiled build.

/**
 * Threads pay off for many small files, where per-file overhead dominates; a thread costs ~50 ms
 * to start and ~30 MiB. Fewer or larger files do as well in this thread, where async zlib already
 * compresses on libuv's pool.
 */
function useThreads(smallFiles: number, smallBytes: number): boolean {
  return smallFiles >= 256 && smallBytes / smallFiles <= 64 * 1024;
}

const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const zlib = require('node:zlib');
const FLAGS = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK;
// Results are transferred, so each needs an ArrayBuffer of its own (never Buffer's shared pool).
const own = (b) => {
  if (b.byteOffset === 0 && b.buffer.byteLength === b.length) return b;
  const c = Buffer.allocUnsafeSlow(b.length);
  b.copy(c);
  return c;
};
function prepare(item, level, maxRatio) {
  const fd = fs.openSync(item.path, FLAGS);
  let raw;
  try {
    if (!fs.fstatSync(fd).isFile()) return { code: 'ENOTREG', message: 'no longer a regular file' };
    raw = Buffer.allocUnsafeSlow(item.size);
    let filled = 0;
    while (filled < item.size) {
      const n = fs.readSync(fd, raw, filled, item.size - filled, filled);
      if (n === 0) return { code: 'ESHORT', message: 'expected ' + item.size + ' bytes, read ' + filled };
      filled += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  const crc = zlib.crc32(raw);
  if (!item.stored && raw.length > 0) {
    const deflated = zlib.deflateRawSync(raw, { level });
    if (deflated.length <= raw.length * maxRatio) return { method: 8, crc, usize: raw.length, data: own(deflated) };
  }
  return { method: 0, crc, usize: raw.length, data: raw };
}
parentPort.on('message', ({ id, items, level, maxRatio }) => {
  const results = [];
  const transfer = [];
  for (const item of items) {
    let r;
    try {
      r = prepare(item, level, maxRatio);
    } catch (err) {
      r = { code: err.code || 'EIO', message: err.message };
    }
    if (r.data) transfer.push(r.data.buffer);
    results.push(r);
  }
  parentPort.postMessage({ id, results }, transfer);
});
`;

interface WorkItem {
  path: string;
  size: number;
  /** Store without trying to deflate (already-compressed extension). */
  stored: boolean;
}

type WorkResult = { method: number; crc: number; usize: number; data: Uint8Array } | { code: string; message: string };

class CompressionPool {
  private readonly slots: { worker: Worker; busy: number }[] = [];
  private readonly waiting = new Map<number, { resolve: (r: WorkResult[]) => void; reject: (e: Error) => void }>();
  private nextId = 0;
  private failure: Error | null = null;
  private closing = false;

  constructor(size: number, private readonly level: number) {
    for (let i = 0; i < size; i++) {
      const slot = { worker: new Worker(WORKER_SOURCE, { eval: true }), busy: 0 };
      slot.worker.on('message', (msg: { id: number; results: WorkResult[] }) => {
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

  run(items: WorkItem[]): Promise<WorkResult[]> {
    if (this.failure) return Promise.reject(this.failure);
    const slot = this.slots.reduce((a, b) => (b.busy < a.busy ? b : a));
    slot.busy++;
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      slot.worker.postMessage({ id, items, level: this.level, maxRatio: MAX_DEFLATE_RATIO });
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

function fromWorker(entry: ZipEntry, r: WorkResult): Prepared {
  if ('code' in r) {
    if (['ELOOP', 'ENOENT', 'ENOTREG', 'ESHORT'].includes(r.code)) throw changedError(entry, r.message);
    throw sourceError(Object.assign(new Error(r.message), { code: r.code }), entry.path);
  }
  return { method: r.method, crc: r.crc, usize: r.usize, data: Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength) };
}

function defaultThreads(): number {
  return Math.max(1, Math.min(4, availableParallelism() - 1));
}

function isSmall(entry: ZipEntry): boolean {
  return entry.type !== 'file' || entry.size <= SMALL_FILE_BYTES;
}

/** Worst-case deflate output for `size` bytes (stored blocks: 5 bytes per 16 KiB) plus slack. */
function mayExceed4GiB(size: number): boolean {
  return size + Math.ceil(size / 16_383) * 5 + 1024 >= U32_MAX;
}

// ---------------------------------------------------------------------------------------------
// Writer

/**
 * Read-ahead over the small entries, in archive order, bounded in entries and bytes: while entry
 * i is written, the following small files are being read and compressed (in threads or on libuv's
 * pool). Large entries are skipped here; they stream when their turn comes.
 */
class ReadAhead {
  private readonly pending = new Map<number, { promise: Promise<Prepared>; cost: number }>();
  private cursor = 0;
  private inFlightBytes = 0;

  constructor(
    private readonly entries: ZipEntry[],
    private readonly level: number,
    private readonly pool: CompressionPool | null,
  ) {}

  /** Start reading entries from `from` on, as far as the bounds allow. */
  fill(from: number): void {
    this.cursor = Math.max(this.cursor, from);
    const { pending } = this;
    // Refill in batch-sized steps, not one file per entry written, so threads get whole batches.
    if (pending.size > 0 && (PREFETCH_ENTRIES - pending.size < BATCH_FILES || PREFETCH_BYTES - this.inFlightBytes < BATCH_BYTES)) return;
    let batch: { index: number; entry: ZipEntry; cost: number }[] = [];
    let batchBytes = 0;
    const flush = () => {
      if (!batch.length) return;
      const items = batch;
      batch = [];
      batchBytes = 0;
      const results = this.pool!.run(items.map(({ entry }) => ({ path: entry.path, size: entry.size, stored: isStoredExtension(entry.name) })));
      items.forEach(({ index, entry, cost }, j) => this.hold(index, results.then((rs) => fromWorker(entry, rs[j]!)), cost));
    };
    while (this.cursor < this.entries.length && pending.size + batch.length < PREFETCH_ENTRIES) {
      const entry = this.entries[this.cursor]!;
      if (!isSmall(entry)) {
        this.cursor++;
        continue;
      }
      const cost = entry.type === 'file' ? entry.size : 0;
      if (pending.size + batch.length > 0 && this.inFlightBytes + cost > PREFETCH_BYTES) break;
      this.inFlightBytes += cost;
      if (this.pool && entry.type === 'file') {
        batch.push({ index: this.cursor, entry, cost });
        batchBytes += cost;
        if (batch.length >= BATCH_FILES || batchBytes >= BATCH_BYTES) flush();
      } else {
        this.hold(this.cursor, prepareSmall(entry, this.level), cost);
      }
      this.cursor++;
    }
    flush();
  }

  /** The prepared entry `index` (small entries only, taken in order). */
  async take(index: number): Promise<Prepared> {
    this.fill(index);
    const slot = this.pending.get(index)!;
    this.pending.delete(index);
    try {
      return await slot.promise;
    } finally {
      this.inFlightBytes -= slot.cost;
      this.fill(index + 1);
    }
  }

  private hold(index: number, promise: Promise<Prepared>, cost: number): void {
    // Awaited in order by take(); this only keeps an early failure from being "unhandled".
    promise.catch(() => {});
    this.pending.set(index, { promise, cost });
  }
}

/**
 * A readable zip of `source` (from scanSource). Pull-driven: nothing is read faster than the
 * consumer takes it, beyond PREFETCH_BYTES of small files and one 1 MiB read of a large one.
 */
export function createZipStream(source: ZipSource, options: ZipOptions = {}): Readable {
  return Readable.from(generateZip(source, options), { objectMode: false, highWaterMark: READ_CHUNK_BYTES });
}

interface WriteContext {
  level: number;
  forceZip64: boolean;
  signal: AbortSignal | undefined;
  progress: (bytes: number) => void;
}

async function* generateZip(source: ZipSource, options: ZipOptions): AsyncGenerator<Buffer> {
  const level = options.level ?? 4;
  if (!Number.isInteger(level) || level < 1 || level > 9) throw new RangeError(`deflate level must be 1-9, got ${level}`);
  const forceZip64 = options.forceZip64 ?? false;
  const { signal, onProgress } = options;
  const entries = source.entries;

  let smallFiles = 0;
  let smallBytes = 0;
  for (const e of entries) {
    if (e.type === 'file' && isSmall(e)) {
      smallFiles++;
      smallBytes += e.size;
    }
  }
  const threads = options.threads ?? defaultThreads();
  const pool = threads > 0 && useThreads(smallFiles, smallBytes) ? new CompressionPool(threads, level) : null;
  const readAhead = new ReadAhead(entries, level, pool);
  let bytesRead = 0;
  const ctx: WriteContext = {
    level,
    forceZip64,
    signal,
    progress: (n) => {
      bytesRead += n;
      if (n > 0) onProgress?.(bytesRead);
    },
  };

  const central: Buffer[] = [];
  let offset = 0;
  try {
    for (let i = 0; i < entries.length; i++) {
      signal?.throwIfAborted();
      const entry = entries[i]!;
      const nameBuf = Buffer.from(entry.name, 'utf8');
      if (nameBuf.length > U16_MAX) throw new PermanentError(`path too long for a zip entry: ${entry.name.slice(0, 200)}…`);
      const record: EntryRecord = {
        nameBuf,
        flags: FLAG_UTF8,
        method: STORE,
        versionNeeded: entry.type === 'directory' ? 20 : 10,
        dos: dosTime(entry.mtimeMs),
        crc: 0,
        csize: 0,
        usize: 0,
        offset,
        externalAttr: (((entry.mode & 0xffff) << 16) | (entry.type === 'directory' ? 0x10 : 0)) >>> 0,
        zip64Sizes: forceZip64,
      };
      let chunks: AsyncGenerator<Buffer>;
      if (isSmall(entry)) {
        chunks = smallEntry(entry, record, await readAhead.take(i), ctx);
      } else {
        readAhead.fill(i + 1); // small files after this one are read while it streams
        chunks = largeEntry(entry, record, ctx);
      }
      for await (const chunk of chunks) {
        offset += chunk.length;
        yield chunk;
      }
      central.push(centralHeader(record, forceZip64));
    }
  } finally {
    await pool?.close();
  }

  const cdOffset = offset;
  let cdSize = 0;
  // Batch the central directory into ~1 MiB writes.
  let batch: Buffer[] = [];
  let batchBytes = 0;
  for (const rec of central) {
    batch.push(rec);
    batchBytes += rec.length;
    cdSize += rec.length;
    if (batchBytes >= READ_CHUNK_BYTES) {
      yield Buffer.concat(batch);
      batch = [];
      batchBytes = 0;
    }
  }
  if (batch.length) yield Buffer.concat(batch);
  yield endRecords(entries.length, cdOffset, cdSize, forceZip64);
}

/** A directory, link or small file, already read and compressed: header, then data. */
async function* smallEntry(entry: ZipEntry, record: EntryRecord, prepared: Prepared, ctx: WriteContext): AsyncGenerator<Buffer> {
  record.method = prepared.method;
  record.crc = prepared.crc;
  record.usize = prepared.usize;
  record.csize = prepared.data.length;
  record.flags |= deflateFlags(prepared.method, ctx.level);
  if (prepared.method === DEFLATE) record.versionNeeded = 20;
  if (record.zip64Sizes) record.versionNeeded = 45;
  yield localHeader(record, false);
  if (prepared.data.length) yield prepared.data;
  if (entry.type === 'file') ctx.progress(prepared.usize);
}

/** A large file, streamed in 1 MiB reads. Fills in `record` (CRC, sizes) as it goes. */
async function* largeEntry(entry: ZipEntry, record: EntryRecord, ctx: WriteContext): AsyncGenerator<Buffer> {
  const { level, signal } = ctx;
  const handle = await openFile(entry);
  let handleOwned = true;
  try {
    record.method = await chooseMethod(entry, handle, level);
    if (record.method === STORE) {
      // A CRC pre-pass (from the page cache, at memory speed) lets a stored entry carry its CRC
      // and sizes in the local header: streaming readers such as Java's ZipInputStream refuse
      // stored entries that rely on a data descriptor.
      record.crc = await crcOfFile(entry, handle, signal);
      record.usize = record.csize = entry.size;
      record.zip64Sizes = ctx.forceZip64 || entry.size >= U32_MAX;
      record.versionNeeded = record.zip64Sizes ? 45 : 10;
    } else {
      record.flags |= FLAG_DATA_DESCRIPTOR | deflateFlags(DEFLATE, level);
      record.zip64Sizes = ctx.forceZip64 || mayExceed4GiB(entry.size);
      record.versionNeeded = record.zip64Sizes ? 45 : 20;
    }
    yield localHeader(record, record.method === DEFLATE);

    handleOwned = false; // the read stream closes the handle from here
    const input = handle.createReadStream({ start: 0, end: entry.size - 1, highWaterMark: READ_CHUNK_BYTES });
    let crc = 0;
    let usize = 0;
    if (record.method === STORE) {
      for await (const chunk of input as AsyncIterable<Buffer>) {
        signal?.throwIfAborted();
        crc = crc32(chunk, crc);
        usize += chunk.length;
        ctx.progress(chunk.length);
        yield chunk;
      }
      if (usize !== entry.size || crc !== record.crc) throw changedError(entry, 'content differs between two reads');
      return;
    }
    const tap = new Transform({
      readableHighWaterMark: READ_CHUNK_BYTES,
      writableHighWaterMark: READ_CHUNK_BYTES,
      transform(chunk: Buffer, _encoding, callback) {
        crc = crc32(chunk, crc);
        usize += chunk.length;
        ctx.progress(chunk.length);
        callback(null, chunk);
      },
    });
    const deflate = createDeflateRaw({ level, chunkSize: 256 * 1024 });
    // Errors reach the loop below: pipeline destroys `deflate` with the first error.
    pipeline(input, tap, deflate, () => {});
    let csize = 0;
    for await (const chunk of deflate as AsyncIterable<Buffer>) {
      signal?.throwIfAborted();
      csize += chunk.length;
      yield chunk;
    }
    if (usize !== entry.size) throw changedError(entry, `expected ${entry.size} bytes, read ${usize}`);
    record.crc = crc;
    record.usize = usize;
    record.csize = csize;
    yield dataDescriptor(record);
  } finally {
    if (handleOwned) await handle.close();
  }
}
