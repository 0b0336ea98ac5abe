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
import { z } from 'zod';
import type { BackupDatabaseEntry } from '../db/backups.js';
import { absolutePath, safeId } from '../ids.js';
import { postgresUrlWithoutPassword } from '../queues/payloads.js';
import { createParallelGzip } from '../storage/parallel-gzip.js';

export const BACKUP_METADATA_FILE = 'backup-metadata.json';
export const BACKUP_FORMAT_VERSION = '1';

/** An entry's name inside the archive: a bare file name (no separators, not `.`/`..`-led). */
export const ARCHIVE_FILENAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$/;

const databaseEntrySchema = z
  .strictObject({
    name: safeId,
    filename: z
      .string()
      .regex(ARCHIVE_FILENAME, 'must be a bare file name (letters, digits, _ . -; at most 255)')
      .refine((f) => f !== BACKUP_METADATA_FILE, `must not be ${BACKUP_METADATA_FILE}`),
    size_bytes: z.number().int('must be a whole number of bytes').min(0, 'must not be negative').max(Number.MAX_SAFE_INTEGER),
    checksum: z.string().regex(/^sha256:[0-9a-f]{64}$/, 'expected sha256:<64 lowercase hex digits>'),
    kind: z.enum(['sqlite', 'postgres']).optional(),
    source_path: absolutePath.optional(),
    // Informational only: a restore never connects to it (the operator or the configuration names the server).
    source: postgresUrlWithoutPassword('must not carry a password (Stowage never writes one into an archive)')
      .refine((url) => URL.canParse(url) && new URL(url).pathname.length > 1, 'must name its database')
      .optional(),
  })
  .superRefine((d, ctx) => {
    if (d.kind === 'postgres') {
      if (d.source === undefined) ctx.addIssue({ code: 'custom', path: ['source'], message: 'a postgres entry needs its source URL' });
      if (d.source_path !== undefined)
        ctx.addIssue({ code: 'custom', path: ['source_path'], message: 'a postgres entry has no source_path' });
    } else {
      if (d.source_path === undefined)
        ctx.addIssue({ code: 'custom', path: ['source_path'], message: 'a sqlite entry needs its absolute source_path' });
      if (d.source !== undefined) ctx.addIssue({ code: 'custom', path: ['source'], message: 'a sqlite entry has no source URL' });
    }
  });

/**
 * `backup-metadata.json` as a restore accepts it: every field checked, unknown fields refused. A
 * restore reads it from an archive anyone with write access to the bucket could have made, and its
 * values reach file names, folders and database names.
 */
export const backupMetadataSchema = z
  .strictObject({
    timestamp: z.iso.datetime({ message: 'expected an ISO 8601 UTC time, e.g. 2026-01-01T03:00:00Z' }),
    version: z.literal(BACKUP_FORMAT_VERSION, {
      message: `unsupported archive format; this Stowage reads version ${BACKUP_FORMAT_VERSION}`,
    }),
    stowage_version: z.string().regex(/^[0-9A-Za-z.+-]{1,64}$/, 'expected a version such as 0.1.0'),
    /** The configured set-name rule. */
    set: safeId,
    databases: z.array(databaseEntrySchema).min(1, 'an archive holds at least one database').max(1000, 'at most 1000 databases'),
  })
  .superRefine((m, ctx) => {
    const seen = new Set<string>();
    m.databases.forEach((d, i) => {
      if (seen.has(d.filename))
        ctx.addIssue({ code: 'custom', path: ['databases', i, 'filename'], message: `${d.filename} appears twice` });
      seen.add(d.filename);
    });
  });

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
