/**
 * build-artifact: zip a build's output folder and store it as the version's snapshot, streaming
 * (scan → zip → SHA-256/size tap → multipart upload, one pass, bounded memory), then record it in
 * project_versions and upload_receipts and emit `artifact_uploaded`.
 *
 * Size policy, on the source's total file size from a stat walk (nothing is read before the
 * decision): over `artifact.warnBytes` an `artifact_size_warning` event; over `artifact.limitBytes`
 * nothing is uploaded, the warning says so, and the job completes with `skipped_too_large`: a
 * build never fails because of its artifact.
 *
 * buildDir and packPath must resolve inside the source roots (`sourceRoots`); a payload that names
 * anything else fails permanently before a byte is read (the board's "add job" skips the producer).
 *
 * Idempotent: the key derives from the payload, the zip is deterministic (sorted entries, file
 * mtimes), the object is overwritten in place and both rows are upserts, so a rerun ends with one
 * object and one row carrying the same checksum. Resumable: an attempt killed mid-upload leaves
 * its acknowledged parts recorded (upload-state.ts), and the next one verifies and skips them
 * (src/storage/upload.ts).
 */
import { open } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { PermanentError, StowageError } from '../errors.js';
import { upsertProjectVersionArtifact } from '../db/project-versions.js';
import { upsertUploadReceipt } from '../db/upload-receipts.js';
import type { JobProgress } from '../queues/index.js';
import { artifactKey, objectUrl, packKey as packKeyFor } from '../storage/keys.js';
import { attachmentDisposition } from '../storage/presign.js';
import { resolveInsideRoots } from '../storage/source-roots.js';
import { uploadStream, type UploadResult } from '../storage/upload.js';
import { createZipStream, scanSource, type SkippedEntry, type ZipSource } from '../storage/zip.js';
import type { Processor, ProcessorContext } from './context.js';
import { jobResumeStore } from './upload-state.js';

const SIZE_SUGGESTION =
  'Leave dependencies, caches and VCS data (node_modules, .git, .cache, .next/cache) out of the build output, or raise STOWAGE_ARTIFACT_LIMIT_BYTES.';

/** At most one progress report per stage this often (the runtime throttles too; this spares it). */
const PROGRESS_INTERVAL_MS = 250;

/**
 * scanSource of a path held to the source roots, with errors that name the payload field. The path
 * is resolved and checked before anything under it is read, the scan reads the resolved path, and
 * the root the scan settled on is checked again, so a link swapped in between is not followed out.
 */
async function scan(
  field: 'buildDir' | 'packPath',
  path: string,
  signal: AbortSignal,
  config: ProcessorContext['config'],
): Promise<ZipSource> {
  const roots = config.sourceRoots;
  const resolved = await resolveInsideRoots(field, path, roots);
  let source: ZipSource;
  try {
    source = await scanSource(resolved, { signal, archiveHardLinks: config.artifact.archiveHardLinks });
  } catch (err) {
    if (err instanceof PermanentError) throw new PermanentError(`${field}: ${err.message}`, { cause: err });
    throw err;
  }
  await resolveInsideRoots(field, source.root, roots);
  return source;
}

/** True when `path` is a file that already is a zip (local-header or empty-archive signature). */
async function isZipFile(path: string): Promise<boolean> {
  const handle = await open(path, 'r');
  try {
    const magic = Buffer.alloc(4);
    const { bytesRead } = await handle.read(magic, 0, 4, 0);
    return bytesRead === 4 && (magic.readUInt32LE(0) === 0x04034b50 || magic.readUInt32LE(0) === 0x06054b50);
  } finally {
    await handle.close();
  }
}

function progressReporter(ctx: ProcessorContext) {
  const last = new Map<string, number>();
  return (p: JobProgress, force = false) => {
    const now = Date.now();
    if (!force && now - (last.get(p.stage) ?? 0) < PROGRESS_INTERVAL_MS) return;
    last.set(p.stage, now);
    // Not awaited: called from stream callbacks; a lost progress update is harmless.
    ctx.progress(p).catch((err: unknown) => ctx.logger.debug({ err }, 'progress update failed'));
  };
}

export const buildArtifact: Processor<'build-artifact'> = async (job, ctx) => {
  const p = job.data;
  const { warnBytes, limitBytes } = ctx.config.artifact;
  const key = artifactKey(p.userId, p.projectId, p.versionId);
  const filename = `${p.projectId}-${p.versionId}.zip`;
  const who = {
    userId: p.userId,
    projectId: p.projectId,
    versionId: p.versionId,
    ...(p.buildId ? { buildId: p.buildId } : {}),
  };
  const log = ctx.logger.child({ key });
  const report = progressReporter(ctx);

  if (p.packPath && !p.fromVersionId) {
    throw new PermanentError('packPath: needs fromVersionId (the version the pack starts from)');
  }

  const source = await scan('buildDir', p.buildDir, ctx.signal, ctx.config);
  if (source.skipped.length) {
    log.warn(
      { skipped: source.skipped.slice(0, 20), count: source.skipped.length },
      'left out of the artifact: symlinks that leave the folder or dangle, special files, hard links, folders swapped mid-scan',
    );
  }
  // Files the zip writer refuses when it opens them (replaced since the scan, or now outside the
  // folder): logged once the archive is written, the same way.
  const skippedOnRead: (SkippedEntry & { archive: 'artifact' | 'pack' })[] = [];
  const onSkip = (archive: 'artifact' | 'pack') => (s: SkippedEntry) => skippedOnRead.push({ archive, ...s });
  // A restarted stream reports its skips again.
  const forgetSkipped = (archive: 'artifact' | 'pack') => {
    for (let i = skippedOnRead.length - 1; i >= 0; i--) if (skippedOnRead[i]!.archive === archive) skippedOnRead.splice(i, 1);
  };

  const size = source.totalBytes;
  if (size > warnBytes) {
    const skipped = size > limitBytes;
    await ctx.emit('artifact_size_warning', {
      key,
      size,
      limit: limitBytes,
      warnAt: warnBytes,
      skipped,
      suggestion: SIZE_SUGGESTION,
      ...who,
    });
    if (skipped) {
      log.warn({ size, limit: limitBytes }, 'build output over the artifact size limit; nothing uploaded');
      return { status: 'skipped_too_large', key, size, sha256: null, etag: null, packKey: null };
    }
  }

  // Validate the pack before uploading anything, so a bad packPath fails fast and permanently.
  let pack: { key: string; body: () => Readable } | null = null;
  if (p.fromVersionId && p.packPath) {
    const packPath = p.packPath;
    const packSource = await scan('packPath', packPath, ctx.signal, ctx.config);
    const packKey = packKeyFor(p.userId, p.projectId, p.fromVersionId, p.versionId);
    if (packSource.totalBytes > limitBytes) {
      log.warn({ packKey, size: packSource.totalBytes, limit: limitBytes }, 'diff pack over the size limit; not uploaded');
    } else if (packSource.kind === 'file' && (await isZipFile(packSource.root))) {
      pack = { key: packKey, body: () => createReadStream(packSource.root, { highWaterMark: 1024 * 1024 }) };
    } else {
      pack = { key: packKey, body: () => createZipStream(packSource, { signal: ctx.signal, onSkip: onSkip('pack') }) };
    }
  } else if (p.fromVersionId) {
    log.debug('fromVersionId without packPath: no diff pack to store');
  }

  const storage = ctx.storage();
  const metadata = { 'stowage-kind': 'artifact', ...(p.test ? { 'stowage-test': 'true' } : {}) };
  report({ stage: 'archiving', bytes: 0, totalBytes: size }, true);
  // A function, not a stream: a resumed upload whose source changed starts over on a fresh zip.
  const artifact = await uploadStream(storage, {
    key,
    body: () => {
      forgetSkipped('artifact');
      return createZipStream(source, {
        signal: ctx.signal,
        onSkip: onSkip('artifact'),
        onProgress: (bytes) => report({ stage: 'archiving', bytes, totalBytes: size }, bytes === size),
      });
    },
    resume: jobResumeStore(ctx, job, 'artifact'),
    contentType: 'application/zip',
    contentDisposition: attachmentDisposition(filename),
    metadata,
    signal: ctx.signal,
    onProgress: (bytes) => report({ stage: 'uploading', bytes }),
    logger: log,
    metrics: ctx.metrics,
  });
  report({ stage: 'uploading', bytes: artifact.size, totalBytes: artifact.size }, true);

  let packResult: UploadResult | null = null;
  if (pack) {
    packResult = await uploadStream(storage, {
      key: pack.key,
      body: () => {
        forgetSkipped('pack');
        return pack.body();
      },
      resume: jobResumeStore(ctx, job, 'pack'),
      contentType: 'application/zip',
      metadata: { ...metadata, 'stowage-kind': 'pack' },
      signal: ctx.signal,
      logger: log,
      metrics: ctx.metrics,
    });
  }

  if (skippedOnRead.length) {
    log.warn(
      { skipped: skippedOnRead.slice(0, 20), count: skippedOnRead.length },
      'left out of the artifact when read: files replaced since the scan or resolving outside the folder',
    );
  }

  const artifactUrl = objectUrl(storage.bucket, key);
  const client = await ctx.db.pool.connect();
  try {
    await client.query('BEGIN');
    for (const r of packResult ? [artifact, packResult] : [artifact]) {
      await upsertUploadReceipt(client, {
        bucket: storage.bucket,
        key: r.key,
        size: r.size,
        sha256: r.sha256,
        etag: r.etag,
        status: 'uploaded',
        queue: job.queueName ?? null,
        jobId: job.id ?? null,
      });
    }
    await upsertProjectVersionArtifact(client, {
      userId: p.userId,
      projectId: p.projectId,
      versionId: p.versionId,
      artifactUrl,
      artifactSize: artifact.size,
      artifactChecksum: artifact.sha256,
    });
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw new StowageError('STOWAGE_ERR_INTERNAL', `recording the artifact ${key} failed: ${(err as Error).message}`, { cause: err });
  } finally {
    client.release();
  }

  await ctx.emit('artifact_uploaded', {
    key,
    artifactUrl,
    size: artifact.size,
    sha256: artifact.sha256,
    filename,
    downloadReady: true,
    ...who,
  });
  log.info({ size: artifact.size, sourceBytes: size, sha256: artifact.sha256, packKey: packResult?.key }, 'artifact stored');

  return {
    status: 'uploaded',
    key,
    size: artifact.size,
    sha256: artifact.sha256,
    etag: artifact.etag,
    packKey: packResult?.key ?? null,
  };
};
