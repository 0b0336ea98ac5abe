/**
 * One measured Stowage run in its own process, so its peak RSS is its own. Modes:
 *   upload <file> <key>           — uploadStream of one file (multipart, SHA-256 tap, HEAD, sidecar);
 *   resumable <folder> <key> <state> — scan → zip → uploadStream with `resume` kept in Redis
 *                                   under <state>, as a build-artifact job does; prints a
 *                                   `{"acked":bytes}` line per acknowledged part (bench/resume.ts
 *                                   kills it mid-upload and runs it again). With BENCH_GO_STDIN=1
 *                                   it connects and probes the store first, prints
 *                                   `{"ready":true}` and starts on a line on stdin, as a worker
 *                                   that is already running takes a job over;
 *   processor <kind> <payload>    — the kind's processor from src/workers/processors.ts on a JSON
 *                                   payload, validated and given a context built the way
 *                                   src/workers/runtime.ts builds it (real Postgres, Redis events,
 *                                   storage from the env).
 * The time is the work inside the process (start-up excluded). Prints one JSON line:
 * `{ ms, maxRssBytes, result }`.
 */
import { createReadStream } from 'node:fs';
import { Job } from 'bullmq';
import { Redis } from 'ioredis';
import { loadConfig } from '../src/config.js';
import { createDb } from '../src/db/pool.js';
import { createLogger } from '../src/observability/logger.js';
import { createMetrics } from '../src/observability/metrics.js';
import {
  createEventStream,
  isJobKind,
  jobIdFor,
  openQueue,
  parsePayload,
  type JobKind,
  type Payload,
  type Result,
} from '../src/queues/index.js';
import { createStorage, type Storage } from '../src/storage/client.js';
import { storeCapabilities } from '../src/storage/capabilities.js';
import { redisResumeStore } from '../src/storage/resume.js';
import { uploadStream } from '../src/storage/upload.js';
import { createZipStream, scanSource } from '../src/storage/zip.js';
import type { ProcessorContext } from '../src/workers/context.js';
import { PROCESSORS } from '../src/workers/processors.js';

async function upload(file: string, key: string): Promise<unknown> {
  const storage = createStorage(loadConfig());
  try {
    const r = await uploadStream(storage, {
      key,
      body: createReadStream(file, { highWaterMark: 1024 * 1024 }),
      contentType: 'application/octet-stream',
    });
    return { size: r.size, sha256: r.sha256 };
  } finally {
    storage.close();
  }
}

async function resumable(folder: string, key: string, stateKey: string): Promise<unknown> {
  const config = loadConfig();
  const storage = createStorage(config);
  const redis = new Redis(config.redisUrl, { maxRetriesPerRequest: null });
  try {
    if (process.env.BENCH_GO_STDIN === '1') {
      await Promise.all([storeCapabilities(storage), redis.ping()]);
      process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
      await new Promise((resolve) => process.stdin.once('data', resolve));
      process.stdin.pause();
    }
    const scanned = await scanSource(folder);
    const r = await uploadStream(storage, {
      key,
      body: () => createZipStream(scanned),
      contentType: 'application/zip',
      resume: redisResumeStore(redis, stateKey),
      onProgress: (acked) => process.stdout.write(`${JSON.stringify({ acked })}\n`),
    });
    return { size: r.size, sha256: r.sha256, resumedParts: r.resumedParts ?? 0 };
  } finally {
    storage.close();
    redis.disconnect();
  }
}

async function processor(kind: string, payloadJson: string): Promise<unknown> {
  if (!isJobKind(kind)) throw new Error(`unknown kind ${kind}`);
  return runProcessor(kind, payloadJson);
}

async function runProcessor<K extends JobKind>(kind: K, payloadJson: string): Promise<Result<K>> {
  const run = PROCESSORS[kind];
  if (!run) throw new Error(`no processor for kind ${kind}`);
  const config = loadConfig();
  const db = createDb(config);
  const redis = new Redis(config.redisUrl, { maxRetriesPerRequest: null });
  const queue = openQueue(kind, { connection: redis, prefix: config.prefix }, { jobDefaults: false });
  const events = createEventStream(redis, config.prefix, config.events.maxLen);
  let storage: Storage | undefined;
  try {
    const payload = parsePayload(kind, JSON.parse(payloadJson));
    const jobId = jobIdFor(kind, payload);
    const job = new Job<Payload<K>, Result<K>, string>(queue, kind, payload, {}, jobId);
    const ctx: ProcessorContext = {
      config,
      logger: createLogger({ level: 'silent' }),
      db,
      redis,
      storage: () => (storage ??= createStorage(config)),
      metrics: createMetrics({ defaults: false }),
      emit: async (type, data) => {
        await events.emit(type, data, { queue: kind, jobId });
      },
      // The runtime throttles progress to 4/s; a bench run has no one watching.
      progress: async () => {},
      signal: new AbortController().signal,
      attempt: 1,
    };
    return await run(job, ctx);
  } finally {
    storage?.close();
    await queue.close();
    redis.disconnect();
    await db.close();
  }
}

async function main(): Promise<void> {
  const [mode, a, b, c] = process.argv.slice(2);
  if (!a || !b || (mode !== 'upload' && mode !== 'processor' && !(mode === 'resumable' && c)))
    throw new Error('usage: stowage-child upload <file> <key> | resumable <folder> <key> <state-key> | processor <kind> <payload-json>');
  const run = () => (mode === 'upload' ? upload(a, b) : mode === 'resumable' ? resumable(a, b, c!) : processor(a, b));
  // BENCH_WARM=1: one untimed run first, so the timed one is a long-running worker's second job
  // (modules the SDKs load lazily on first use are loaded, the JIT has seen the code), not a
  // cold process's first. Only for runs that can repeat (the aggregation export is idempotent).
  if (process.env.BENCH_WARM === '1') await run();
  const started = performance.now();
  const result = await run();
  const ms = performance.now() - started;
  process.stdout.write(`${JSON.stringify({ ms, maxRssBytes: process.resourceUsage().maxRSS * 1024, result })}\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
