/**
 * A streaming zip writer for a folder (or a single file), written for this pipeline rather than
 * wrapped around archiver: it needs per-entry store/deflate choices, reads and compresses several
 * small files at once (zlib runs on libuv's thread pool, so that uses every core), keeps memory
 * bounded whatever the archive size, and its output is deterministic, so a rerun uploads the very
 * same bytes.
 *
 * This file writes the archive: entry by entry in scan order, then the central directory. The
 * parts it drives live under zip/:
 * - scan.ts: the source walk and the link policy (scanSource, ZipSource);
 * - records.ts: ZIP record encoding (headers, descriptors, Zip64, end records);
 * - read.ts: opening and reading one entry, and the store-or-deflate policy;
 * - read-ahead.ts: which small files are read and compressed ahead of the writer;
 * - thread-pool.ts + compress-thread.ts: the compression threads for many small files.
 *
 * Files up to SMALL_FILE_BYTES are read whole, compressed off the main thread, and written with
 * their sizes and CRC in the local header. Larger files stream in 1 MiB reads: deflated ones (in
 * 1 MiB blocks on every core, parallel-gzip.ts) with a data descriptor (flag bit 3) after their data, stored ones after a CRC pre-pass so their local
 * header is complete (streaming readers reject stored entries with a descriptor). Already-
 * compressed formats (by extension) are stored. Anything else is deflated only if it shrinks:
 * small files by their real deflated size, large ones by deflating a 64 KiB probe.
 *
 * What is read is what the scan saw. O_NOFOLLOW alone guards only a path's last component, so
 * every file is also checked on the descriptor it is then read from, before its header is
 * written (compress-thread.ts's checkOpened): the device and inode the scan recorded, a path
 * inside the source root, one link unless hard links are allowed. A file that fails is not
 * written and is reported to `onSkip`: a folder swapped for a link to /etc after the scan yields
 * no /etc file under any name. On Linux the path is the kernel's for the descriptor
 * (/proc/self/fd), so no swap before or after the check fools it; elsewhere it is the path's
 * realpath, and the device/inode check is what holds. The scan lists each folder through a
 * descriptor checked the same way. A file that shrinks or vanishes after the scan fails the
 * stream with a retryable error instead.
 */
import type { FileHandle } from 'node:fs/promises';
import { Readable, Transform, pipeline } from 'node:stream';
import { crc32 } from 'node:zlib';
import { PermanentError } from '../errors.js';
import { createParallelDeflateRaw } from './parallel-gzip.js';
import { ReadAhead } from './zip/read-ahead.js';
import { changedError, chooseMethod, crcOfFile, isSmall, openFile, READ_CHUNK_BYTES, type Prepared } from './zip/read.js';
import {
  centralHeader,
  dataDescriptor,
  DEFLATE,
  deflateFlags,
  dosTime,
  endRecords,
  FLAG_DATA_DESCRIPTOR,
  FLAG_UTF8,
  localHeader,
  mayExceed4GiB,
  STORE,
  U16_MAX,
  U32_MAX,
  type EntryRecord,
} from './zip/records.js';
import type { SkippedEntry, ZipEntry, ZipSource } from './zip/scan.js';
import { CompressionPool, defaultThreads, useThreads } from './zip/thread-pool.js';

export { isStoredExtension, READ_CHUNK_BYTES, STORED_EXTENSIONS } from './zip/read.js';
export {
  scanSource,
  type ScanOptions,
  type SkippedEntry,
  type SkipReason,
  type ZipEntry,
  type ZipEntryType,
  type ZipSource,
} from './zip/scan.js';

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
  /**
   * Called, in archive order, for each file left out when it was opened: it was replaced since the
   * scan (`changed-since-scan`), now resolves outside the source (`outside-root`), or gained a
   * link (`hard-link`). Nothing of it is in the archive. What the scan left out is in `source.skipped`.
   */
  onSkip?: (skipped: SkippedEntry) => void;
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
  const readAhead = new ReadAhead(entries, level, pool, source);
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
        const prepared = await readAhead.take(i);
        if ('skip' in prepared) {
          options.onSkip?.({ name: entry.name, reason: prepared.skip });
          continue;
        }
        chunks = smallEntry(entry, record, prepared, ctx);
      } else {
        readAhead.fill(i + 1); // small files after this one are read while it streams
        const handle = await openFile(entry, source);
        if ('skip' in handle) {
          options.onSkip?.({ name: entry.name, reason: handle.skip });
          continue;
        }
        chunks = largeEntry(entry, record, handle, ctx);
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
  yield endRecords(central.length, cdOffset, cdSize, forceZip64);
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

/** A large file (opened and checked), streamed in 1 MiB reads. Fills in `record` (CRC, sizes) as it goes. Closes `handle`. */
async function* largeEntry(entry: ZipEntry, record: EntryRecord, handle: FileHandle, ctx: WriteContext): AsyncGenerator<Buffer> {
  const { level, signal } = ctx;
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
    // In 1 MiB blocks on every core (parallel-gzip.ts): one zlib stream kept a large text file on one core.
    const deflate = createParallelDeflateRaw({ level });
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
