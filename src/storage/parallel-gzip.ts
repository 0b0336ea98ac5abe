/**
 * deflate on every core, as pigz does it: the input is cut into blocks, each block is deflated on
 * the libuv thread pool with the previous 32 KiB as its dictionary (so the output is as small as
 * one stream's), ended with a sync flush (byte-aligned, not final), and the blocks are written in
 * order. The result is one ordinary deflate stream: createParallelGzip frames it as one gzip
 * member that any gunzip reads, and the zip writer uses the raw stream for a large entry
 * (createParallelDeflateRaw). Memory stays bounded: at most `concurrency` blocks are in flight,
 * and the stream waits for its reader like any Transform. The output depends only on the input,
 * the level and the block size, so a rerun writes the same bytes (a resumed upload relies on it).
 *
 * Why: a backup archive is one long stream, and Node's createGzip compresses it on one thread;
 * gzip level 6 was where a backup spent most of its time (docs/performance.md). A zip entry of a
 * large text file was the same: one zlib stream, one core.
 */
import { availableParallelism } from 'node:os';
import { Transform, type TransformCallback } from 'node:stream';
import { promisify } from 'node:util';
import { constants, crc32, deflateRaw, type ZlibOptions } from 'node:zlib';

const deflateRawAsync = promisify<Buffer, ZlibOptions, Buffer>(deflateRaw);

/** deflate's window: what a block may refer back to in the one before it. */
const WINDOW = 32 * 1024;
/**
 * zlib's output buffer per call. Its default (16 KiB) makes a 1 MiB block dozens of thread-pool
 * round trips, each a callback on the main thread; 256 KiB makes it a few.
 */
const OUT_CHUNK = 256 * 1024;
/** gzip header: magic, deflate, no flags, no mtime (reproducible), no extra flags, OS unknown. */
const HEADER = Buffer.from([0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff]);

export interface ParallelGzipOptions {
  /** zlib level, 0–9. Default 6 (gzip's and tar czf's). */
  level?: number;
  /** Bytes of input per block. Default 1 MiB; at least 64 KiB. */
  blockSize?: number;
  /**
   * Blocks compressed at once. Default: the cores available + 2. One per core left a core idle
   * whenever a block waited for the main thread to collect it: at 2 cores, 4 in flight gzipped
   * a 220 MB database in 1.1–1.2 s against 1.4–1.8 s with 2 (pigz -1: 1.15 s).
   */
  concurrency?: number;
}

/** What frames the deflate stream: bytes before it, each block's input as it goes, bytes after. */
interface Frame {
  head?: Buffer;
  onBlock?(block: Buffer): void;
  tail?(): Buffer;
}

/** A raw deflate stream (no header or trailer), for a zip entry's data. */
export function createParallelDeflateRaw(options: ParallelGzipOptions = {}): Transform {
  return blockDeflater(options, {});
}

/** One gzip member: header, the deflate stream, CRC-32 and size. */
export function createParallelGzip(options: ParallelGzipOptions = {}): Transform {
  let crc = 0;
  let size = 0;
  return blockDeflater(options, {
    head: HEADER,
    onBlock(block) {
      // An empty block leaves the CRC as it is: zlib.crc32 was seen to return 0 for the empty
      // final block here (Node 20.20) instead of the running value (caught by the block-edge tests).
      if (block.length > 0) crc = crc32(block, crc);
      size = (size + block.length) % 0x1_0000_0000;
    },
    tail() {
      const trailer = Buffer.alloc(8);
      trailer.writeUInt32LE(crc >>> 0, 0);
      trailer.writeUInt32LE(size >>> 0, 4);
      return trailer;
    },
  });
}

function blockDeflater(options: ParallelGzipOptions, frame: Frame): Transform {
  const level = options.level ?? 6;
  const blockSize = Math.max(64 * 1024, options.blockSize ?? 1024 * 1024);
  const concurrency = Math.max(1, options.concurrency ?? availableParallelism() + 2);

  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let dictionary: Buffer | undefined;
  const inFlight: Promise<Buffer>[] = [];

  const dispatch = (block: Buffer, last: boolean) => {
    const opts: ZlibOptions = {
      level,
      chunkSize: OUT_CHUNK,
      ...(dictionary ? { dictionary } : {}),
      ...(last ? {} : { finishFlush: constants.Z_SYNC_FLUSH }),
    };
    const done = deflateRawAsync(block, opts);
    // Awaited in order later; this keeps an early failure from being reported as unhandled.
    done.catch(() => {});
    inFlight.push(done);
    frame.onBlock?.(block);
    // Non-final blocks are blockSize ≥ 64 KiB, so the tail is a full window.
    dictionary = block.subarray(Math.max(0, block.length - WINDOW));
  };

  let started = false;
  const start = (stream: Transform) => {
    if (started) return;
    started = true;
    if (frame.head) stream.push(frame.head);
  };

  return new Transform({
    async transform(this: Transform, chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
      try {
        start(this);
        let offset = 0;
        while (offset < chunk.length) {
          const take = Math.min(blockSize - pendingBytes, chunk.length - offset);
          pending.push(chunk.subarray(offset, offset + take));
          pendingBytes += take;
          offset += take;
          if (pendingBytes === blockSize) {
            // A chunk that is a whole block (the zip's 1 MiB file reads) is deflated as it is: a
            // copy per block was a second GB of garbage in a 2 GB archive. A written chunk is the
            // stream's to hold, as zlib's own streams hold theirs.
            dispatch(pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes), false);
            pending = [];
            pendingBytes = 0;
            while (inFlight.length >= concurrency) this.push(await inFlight.shift()!);
          }
        }
        callback();
      } catch (err) {
        callback(err as Error);
      }
    },
    async flush(this: Transform, callback: TransformCallback) {
      try {
        start(this);
        // The final block (possibly empty) ends the deflate stream.
        dispatch(Buffer.concat(pending, pendingBytes), true);
        pending = [];
        while (inFlight.length > 0) this.push(await inFlight.shift()!);
        if (frame.tail) this.push(frame.tail());
        callback();
      } catch (err) {
        callback(err as Error);
      }
    },
  });
}
