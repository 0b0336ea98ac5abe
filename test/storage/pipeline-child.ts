/**
 * Child process for upload-memory.test.ts: scan → zip → upload one folder with the production
 * config path (env vars), then print one JSON line with the result and this process's peak RSS.
 * A separate process so the peak is the pipeline's own, not the test runner's. The store (the
 * run's radosgw) comes through R2_* env vars: vitest's inject() is not available here.
 */
import { loadConfig } from '../../src/config.js';
import { createStorage } from '../../src/storage/client.js';
import { uploadStream } from '../../src/storage/upload.js';
import { createZipStream, scanSource } from '../../src/storage/zip.js';

async function main(): Promise<void> {
  const [source, key] = process.argv.slice(2);
  if (!source || !key) throw new Error('usage: pipeline-child <source> <key>');
  const storage = createStorage(loadConfig());
  try {
    const started = Date.now();
    const scanned = await scanSource(source);
    const result = await uploadStream(storage, { key, body: createZipStream(scanned), contentType: 'application/zip' });
    // resourceUsage().maxRSS is in KiB.
    const maxRssBytes = process.resourceUsage().maxRSS * 1024;
    process.stdout.write(`${JSON.stringify({ ...result, sourceBytes: scanned.totalBytes, maxRssBytes, ms: Date.now() - started })}\n`);
  } finally {
    storage.close();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
