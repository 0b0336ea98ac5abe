/**
 * Backup archives: a streamed tar.gz holding `backup-metadata.json` first, then one file per
 * database snapshot. Nothing is buffered beyond the stream windows: each file is piped into its
 * tar entry in turn, the tar into a parallel gzip (a few 1 MiB blocks in flight), and the caller
 * hands the result to uploadStream.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { PassThrough, pipeline, type Readable } from 'node:stream';
import { pipeline as pipelineAsync } from 'node:stream/promises';
import tar from 'tar-stream';
import type { BackupDatabaseEntry } from '../db/backups.js';
import { createParallelGzip } from '../storage/parallel-gzip.js';

export const BACKUP_METADATA_FILE = 'backup-metadata.json';
export const BACKUP_FORMAT_VERSION = '1';

export interface BackupMetadata {
  /** ISO 8601, UTC, seconds: when the snapshots were taken. */
  timestamp: string;
  /** Archive format version. */
  version: string;
  stowage_version: string;
  set: string;
  databases: BackupDatabaseEntry[];
}

export interface ArchiveFile {
  /** Name inside the archive (no `/`). */
  filename: string;
  /** Where the snapshot is on disk. */
  path: string;
  size: number;
}

/** `sha256:<hex>` of a file, streamed. */
export async function fileChecksum(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipelineAsync(createReadStream(path, { highWaterMark: 1024 * 1024 }), hash);
  return `sha256:${hash.digest('hex')}`;
}

export async function fileSize(path: string): Promise<number> {
  return (await stat(path)).size;
}

/**
 * The archive as a gzip stream. Entries are written in order (metadata, then the files in the
 * given order) with mode 0600 and the metadata's timestamp as mtime. An error reading a file
 * destroys the returned stream with that error (so an upload reading it fails and aborts).
 */
export function createBackupArchive(
  metadata: BackupMetadata,
  files: readonly ArchiveFile[],
  options: { signal?: AbortSignal } = {},
): Readable {
  const pack = tar.pack();
  // gzip is where a backup's time goes, so it runs on every core (src/storage/parallel-gzip.ts) at level 1:
  // on the benchmark's databases 1.6× faster than level 6 for 3–4 % more bytes (docs/performance.md).
  // Litestream (LZ4) and restic (zstd's default level) make the same trade.
  const gzip = createParallelGzip({ level: 1 });
  const out = new PassThrough();
  pipeline(pack, gzip, out, () => {
    /* errors reach `out` through pipeline's destroy */
  });
  const mtime = new Date(metadata.timestamp);

  const write = async (): Promise<void> => {
    const json = Buffer.from(`${JSON.stringify(metadata, null, 2)}\n`);
    await new Promise<void>((resolve, reject) => {
      pack.entry({ name: BACKUP_METADATA_FILE, size: json.length, mode: 0o600, mtime, type: 'file' }, json, (err) =>
        err ? reject(err) : resolve(),
      );
    });
    for (const file of files) {
      options.signal?.throwIfAborted();
      await new Promise<void>((resolve, reject) => {
        const entry = pack.entry({ name: file.filename, size: file.size, mode: 0o600, mtime, type: 'file' }, (err) =>
          err ? reject(err) : resolve(),
        );
        // tar-stream fails the entry if the byte count differs from the declared size.
        pipeline(createReadStream(file.path, { highWaterMark: 1024 * 1024 }), entry, (err) => {
          if (err) reject(err);
        });
      });
    }
    pack.finalize();
  };
  write().catch((err: unknown) => {
    const error = err instanceof Error ? err : new Error(String(err));
    pack.destroy(error);
    out.destroy(error);
  });
  return out;
}
