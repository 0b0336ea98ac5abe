/**
 * One measured run for bench/artifact.ts, in its own process so its peak RSS is its own:
 *   baseline — the seed's way: archiver zip (zlib level 6) to a temp file, SHA-256 of the file,
 *              then lib-storage Upload of the file;
 *   stowage  — scanSource → createZipStream → uploadStream (one pass, no temp file; includes the
 *              HEAD check and the SHA-256 sidecar);
 *   zip-only — scanSource → createZipStream → SHA-256, output discarded (bench/memory.ts: the
 *              pipeline's own time without the store).
 * Both use the same S3 client settings (createStorage from the env). Prints one JSON line.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { Upload } from '@aws-sdk/lib-storage';
import { ZipArchive } from 'archiver';
import { loadConfig } from '../src/config.js';
import type { Timeline } from './lib.js';
import { createStorage, type Storage } from '../src/storage/client.js';
import { uploadStream } from '../src/storage/upload.js';
import { createZipStream, scanSource } from '../src/storage/zip.js';

async function baseline(storage: Storage, source: string, key: string): Promise<{ size: number; sha256: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'stowage-bench-'));
  try {
    const zipPath = join(dir, 'artifact.zip');
    const out = createWriteStream(zipPath);
    const archive = new ZipArchive({ zlib: { level: 6 } });
    archive.pipe(out);
    archive.directory(source, false);
    await archive.finalize();
    await finished(out);
    const hash = createHash('sha256');
    for await (const chunk of createReadStream(zipPath)) hash.update(chunk as Buffer);
    const sha256 = hash.digest('hex');
    await new Upload({
      client: storage.client,
      params: { Bucket: storage.bucket, Key: key, Body: createReadStream(zipPath), ContentType: 'application/zip' },
      partSize: storage.partSize,
      queueSize: storage.queueSize,
    }).done();
    return { size: (await stat(zipPath)).size, sha256 };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function recordRequests(storage: Storage, timeline: Timeline, t0: number): void {
  storage.client.middlewareStack.add(
    (next, context) => async (args) => {
      const start = performance.now() - t0;
      try {
        return await next(args);
      } finally {
        const key = (args.input as { Key?: unknown }).Key;
        timeline.requests.push({
          command: String(context.commandName),
          key: typeof key === 'string' ? key : '',
          start,
          end: performance.now() - t0,
        });
      }
    },
    { step: 'initialize', name: 'benchTimeline' },
  );
}

async function stowage(storage: Storage, source: string, key: string, timeline?: Timeline): Promise<{ size: number; sha256: string }> {
  const t0 = performance.now();
  if (timeline) recordRequests(storage, timeline, t0);
  const scanned = await scanSource(source);
  if (timeline) timeline.scanned = performance.now() - t0;
  let body: Readable = createZipStream(scanned);
  if (timeline) {
    // A pass-through that notes the first and last byte (a 'data' listener would start the flow early).
    body = body.pipe(
      new Transform({
        transform(chunk, _encoding, callback) {
          timeline.zipFirstByte ??= performance.now() - t0;
          callback(null, chunk);
        },
        flush(callback) {
          timeline.zipEnd = performance.now() - t0;
          callback();
        },
      }),
    );
  }
  const r = await uploadStream(storage, { key, body, contentType: 'application/zip' });
  return { size: r.size, sha256: r.sha256 };
}

/** The zip and SHA-256 alone, output discarded: Stowage's own share of the pipeline, without the store. */
async function zipOnly(source: string): Promise<{ size: number; sha256: string }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createZipStream(await scanSource(source))) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { size, sha256: hash.digest('hex') };
}

async function main(): Promise<void> {
  const [mode, source, key] = process.argv.slice(2);
  if (mode === 'zip-only' && source) {
    const started = performance.now();
    const r = await zipOnly(source);
    const ms = performance.now() - started;
    process.stdout.write(`${JSON.stringify({ mode, ...r, ms, maxRssBytes: process.resourceUsage().maxRSS * 1024 })}\n`);
    return;
  }
  if ((mode !== 'baseline' && mode !== 'stowage') || !source || !key)
    throw new Error('usage: artifact-child baseline|stowage <source> <key> | zip-only <source>');
  const storage = createStorage(loadConfig());
  try {
    const started = performance.now();
    const timeline: Timeline | undefined = process.env.BENCH_STAGES === '1' && mode === 'stowage' ? { requests: [] } : undefined;
    const r = mode === 'baseline' ? await baseline(storage, source, key) : await stowage(storage, source, key, timeline);
    const ms = performance.now() - started;
    process.stdout.write(
      `${JSON.stringify({ mode, ...r, ms, maxRssBytes: process.resourceUsage().maxRSS * 1024, ...(timeline ? { timeline } : {}) })}\n`,
    );
  } finally {
    storage.close();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
