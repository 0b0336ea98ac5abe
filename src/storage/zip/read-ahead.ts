/**
 * Read-ahead scheduling: which small entries are being read and compressed while earlier ones are
 * written, within bounds on entries and bytes, and how they are batched for the thread pool.
 */
import { isSmall, isStoredExtension, prepareSmall, type Prepared, type ReadScope, type Skip } from './read.js';
import type { ZipEntry } from './scan.js';
import { fromWorker, type CompressionPool } from './thread-pool.js';

/** Bytes of small files read ahead (and compressed) while earlier entries are written. */
const PREFETCH_BYTES = 16 * 1024 * 1024;
/** Small entries read ahead at most (a bound for trees of many tiny files). */
const PREFETCH_ENTRIES = 1024;
/** Small files go to a compression thread in batches of this many files or bytes. */
const BATCH_FILES = 64;
const BATCH_BYTES = 2 * 1024 * 1024;

/**
 * Read-ahead over the small entries, in archive order, bounded in entries and bytes: while entry
 * i is written, the following small files are being read and compressed (in threads or on libuv's
 * pool). Large entries are skipped here; they stream when their turn comes.
 */
export class ReadAhead {
  private readonly pending = new Map<number, { promise: Promise<Prepared | Skip>; cost: number }>();
  private cursor = 0;
  private inFlightBytes = 0;
  private readonly entries: ZipEntry[];
  private readonly level: number;
  private readonly pool: CompressionPool | null;
  private readonly scope: ReadScope;

  constructor(entries: ZipEntry[], level: number, pool: CompressionPool | null, scope: ReadScope) {
    this.entries = entries;
    this.level = level;
    this.pool = pool;
    this.scope = scope;
  }

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
      const results = this.pool!.run(
        items.map(({ entry }) => ({
          path: entry.path,
          size: entry.size,
          dev: entry.dev,
          ino: entry.ino,
          stored: isStoredExtension(entry.name),
        })),
        { root: this.scope.root, archiveHardLinks: this.scope.archiveHardLinks },
      );
      items.forEach(({ index, entry, cost }, j) =>
        this.hold(
          index,
          results.then((rs) => fromWorker(entry, rs[j]!)),
          cost,
        ),
      );
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
        this.hold(this.cursor, prepareSmall(entry, this.level, this.scope), cost);
      }
      this.cursor++;
    }
    flush();
  }

  /** The prepared entry `index` (small entries only, taken in order), or why it is left out. */
  async take(index: number): Promise<Prepared | Skip> {
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

  private hold(index: number, promise: Promise<Prepared | Skip>, cost: number): void {
    // Awaited in order by take(); this only keeps an early failure from being "unhandled".
    promise.catch(() => {});
    this.pending.set(index, { promise, cost });
  }
}
