/**
 * One pass from a byte stream to an object: the stream is cut into parts of exactly
 * `storage.partSize` bytes (R2 wants equal parts), up to `storage.queueSize` parts are in flight,
 * and the bytes are counted and SHA-256-hashed as they pass, so the source is read once. A body
 * shorter than one part is one PutObject. After the upload a HEAD confirms the stored size, and
 * the SHA-256 is written to a sidecar object.
 *
 * Memory is bounded by partSize × (queueSize + 1), whatever the object size: the part being
 * filled and those in flight, in buffers reused from part to part (partsOf). An upload of
 * thousands of parts allocates a handful, so the peak does not wait on V8 freeing old ones.
 *
 * Why a sidecar (`<key>.sha256`) and not object metadata: S3 and R2 take user metadata only when
 * the object is created, i.e. at CreateMultipartUpload, before a single byte has been hashed.
 * Putting it there afterwards means a server-side CopyObject of the whole object onto itself
 * (slow for big artifacts, capped at 5 GiB per copy, and it replaces the ETag), and hashing first
 * means reading the source twice or staging it, which this pipeline never does. The sidecar holds
 * `<hex>  <file name>\n`, the `sha256sum` format, so any S3 client can check a download with
 * `sha256sum -c`. The object's metadata names its sidecar. See docs/storage.md.
 *
 * A failed upload is aborted (AbortMultipartUpload, awaited) before uploadStream rejects, with
 * the first failure as the cause; an abort the store refuses is named in the error, not
 * swallowed. The job's abort signal (worker shutdown) stops the upload the same way.
 *
 * With `resume` (a ResumeStore, resume.ts) the upload survives the worker: each part the store
 * acknowledges is recorded (number, ETag, size, SHA-256) before the attempt moves past it, so
 * after a SIGKILL, an OOM kill or a lost host the job's next attempt:
 *
 * 1. loads the record; none, or a record the store cannot back (no ListParts, another key, part
 *    size or checksum setting): a fresh upload, and the old one is aborted;
 * 2. lists the upload's parts (ListParts). NoSuchUpload (completed, aborted by `stowage cleanup
 *    --multipart` or a lifecycle rule): a fresh upload. A listed part whose ETag or size is not the
 *    recorded one: the upload is aborted and started again;
 * 3. regenerates the stream from the start (the zip writer is deterministic, see zip.ts) and cuts
 *    it into the same parts. A recorded part is hashed and compared with its recorded SHA-256: the
 *    same, it is not sent again; different (the source changed), that upload is aborted, logged,
 *    and the upload starts from zero on a fresh stream. Parts not recorded are sent as usual;
 * 4. completes the upload with every part. The whole-object SHA-256 is taken from the same bytes
 *    as they pass (skipped parts included), so the object's hash, sidecar and receipt equal those
 *    of an uninterrupted run.
 *
 * An attempt that fails in-process (a store error past the SDK's retries, the worker's shutdown
 * abort) aborts its upload and clears the record; only an attempt that never got to clean up
 * leaves one to resume. A body shorter than one part records nothing.
 *
 * (Not @aws-sdk/lib-storage's Upload: it cannot skip parts a store already holds, and it copies
 * every part out of the stream's chunks into a fresh buffer, ~40 MB of garbage awaiting V8 at
 * the default window; docs/performance.md, "Memory".)
 */
import { createHash } from 'node:crypto';
import { basename } from 'node:path';
import type { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  HeadObjectCommand,
  ListPartsCommand,
  PutObjectCommand,
  UploadPartCommand,
  type CompletedPart,
} from '@aws-sdk/client-s3';
import { StowageError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { storeCapabilities, unquoteEtag, type StoreCapabilities } from './capabilities.js';
import type { Storage } from './client.js';
import { sha256SidecarKey } from './keys.js';
import { startHashThread, UploadHasher } from './part-hasher.js';
import type { PartRecord, ResumeStore, UploadStateHeader } from './resume.js';
import { describeStoreError, isNoSuchUpload, isNotImplemented, storeError } from './store-errors.js';

export interface UploadStreamOptions {
  key: string;
  /**
   * The bytes. A function that makes the stream (and makes the very same bytes again when called
   * again) is required with `resume`: a changed source restarts from a fresh stream.
   */
  body: Readable | (() => Readable);
  contentType?: string;
  /** Stored on the object, e.g. `attachment; filename="x.zip"`. */
  contentDisposition?: string;
  /** User metadata (x-amz-meta-*); set at creation. */
  metadata?: Record<string, string>;
  signal?: AbortSignal;
  /** Bytes acknowledged by the store so far (per finished part for multipart uploads). */
  onProgress?: (uploadedBytes: number) => void;
  /** Write the `<key>.sha256` sidecar after the object. Default true. */
  sidecar?: boolean;
  logger?: Logger;
  metrics?: Pick<Metrics, 'uploadBytes' | 'uploadDuration' | 'uploadAttempts'>;
  /**
   * Keep the multipart upload's state here so that the next attempt, after a crash, resumes it
   * instead of starting over (see the file comment; docs/storage.md "Resuming uploads").
   */
  resume?: ResumeStore | undefined;
}

export interface UploadResult {
  key: string;
  /** Bytes stored, confirmed by HEAD. */
  size: number;
  /** SHA-256 of the stored bytes, hex. */
  sha256: string;
  etag: string | null;
  /** The sidecar's key, or null when it was not written. */
  sidecarKey: string | null;
  /** With `resume`: parts an interrupted attempt had stored that this one verified and did not send again. */
  resumedParts?: number;
}

/** Content type, disposition and user metadata of the object (the metadata names its sidecar). */
function objectHeaders(options: UploadStreamOptions) {
  return {
    ContentType: options.contentType ?? 'application/octet-stream',
    ...(options.contentDisposition ? { ContentDisposition: options.contentDisposition } : {}),
    Metadata: {
      ...options.metadata,
      ...(options.sidecar !== false ? { 'sha256-sidecar': basename(sha256SidecarKey(options.key)) } : {}),
    },
  };
}

/** Upload metrics of one attempt: `record(status, bytes)`. */
function uploadRecorder(metrics: UploadStreamOptions['metrics']) {
  const started = process.hrtime.bigint();
  return (status: 'ok' | 'error' | 'aborted', bytes: number) => {
    metrics?.uploadAttempts.inc({ status });
    metrics?.uploadDuration.observe({ status }, Number(process.hrtime.bigint() - started) / 1e9);
    if (bytes > 0) metrics?.uploadBytes.inc({ status }, bytes);
  };
}

/**
 * After the object is complete: a HEAD confirms the stored size (and gives the ETag where the
 * completion's answer had none), then the `<key>.sha256` sidecar is written.
 */
async function finishUpload(
  storage: Storage,
  options: UploadStreamOptions,
  done: { size: number; sha256: string; etag: string | null; uploadId: string | undefined; resumedParts: number },
  record: ReturnType<typeof uploadRecorder>,
): Promise<UploadResult> {
  const { key, signal, logger } = options;
  const { size, sha256, uploadId, resumedParts } = done;
  let etag = done.etag;
  try {
    const head = await storage.client.send(new HeadObjectCommand({ Bucket: storage.bucket, Key: key }));
    if (head.ContentLength !== size) {
      throw new StowageError('STOWAGE_ERR_STORE', `upload of ${key}: the store reports ${head.ContentLength} bytes, ${size} were sent`);
    }
    // radosgw's CompleteMultipartUpload answer carries an empty <ETag>; HEAD has the real one.
    if (!etag || etag === '""') etag = head.ETag ?? null;
    let sidecarKey: string | null = null;
    if (options.sidecar !== false) {
      sidecarKey = sha256SidecarKey(key);
      await storage.client.send(
        new PutObjectCommand({
          Bucket: storage.bucket,
          Key: sidecarKey,
          Body: `${sha256}  ${basename(key)}\n`,
          ContentType: 'text/plain; charset=utf-8',
        }),
        signal ? { abortSignal: signal } : {},
      );
    }
    record('ok', size);
    logger?.debug({ key, size, sha256, uploadId }, 'uploaded');
    return { key, size, sha256, etag, sidecarKey, ...(options.resume ? { resumedParts } : {}) };
  } catch (err) {
    record('error', 0);
    throw storeError(err, `upload of ${key}: verifying or recording the checksum failed`);
  }
}

/** An interrupted upload whose recorded parts the store still holds, as recorded. */
interface Resume extends UploadStateHeader {
  parts: Map<number, PartRecord>;
}

type Outcome = { kind: 'done'; result: UploadResult } | { kind: 'changed'; reason: string };

const hexToBase64 = (hex: string) => Buffer.from(hex, 'hex').toString('base64');

/**
 * How long a resume-state read or write may take. The runtime's Redis connection queues commands
 * while Redis is away (BullMQ wants no per-request retry limit), so without a bound an outage
 * would hold the upload; past it the write counts as failed and the upload goes on.
 */
const STATE_TIMEOUT_MS = 5_000;

function bounded<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer from Redis within ${STATE_TIMEOUT_MS} ms`)), STATE_TIMEOUT_MS);
    timer.unref();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** `store` with every call bounded by STATE_TIMEOUT_MS. */
function boundedStore(store: ResumeStore): ResumeStore {
  return {
    name: store.name,
    load: () => bounded(store.load(), `reading ${store.name}`),
    begin: (header) => bounded(store.begin(header), `writing ${store.name}`),
    addPart: (part) => bounded(store.addPart(part), `writing ${store.name}`),
    clear: () => bounded(store.clear(), `deleting ${store.name}`),
  };
}

/**
 * A part's bytes, and `release()` to hand its buffer back once the store has them (or they were
 * skipped). A part whose memory went to the hash thread and back is released with what came back.
 */
interface Part {
  data: Buffer;
  release(returned?: Buffer): void;
}

/** Bytes the first part's buffer starts at: a small body never allocates a whole part. */
const FIRST_BUFFER = 64 * 1024;

/**
 * The body cut into parts of exactly `partSize` bytes, the last one shorter (none for an empty
 * body). Each chunk is copied into a part buffer as it arrives (it dies young), and released part
 * buffers are filled again, so at most queueSize + 1 exist however many parts the body has. The
 * first buffer grows from FIRST_BUFFER by doubling, so a 2 kB export costs 64 kB, not 8 MiB.
 */
async function* partsOf(body: Readable, partSize: number): AsyncGenerator<Part> {
  const free: Buffer[] = [];
  const part = (buf: Buffer, length: number): Part => ({
    data: buf.subarray(0, length),
    release: (returned) => {
      // Memory that went to the hash thread comes back as a new ArrayBuffer: wrap that one.
      const reusable = returned && returned.buffer !== buf.buffer ? Buffer.from(returned.buffer) : buf;
      if (reusable.length === partSize) free.push(reusable);
    },
  });
  let buf: Buffer | null = Buffer.allocUnsafeSlow(Math.min(partSize, FIRST_BUFFER));
  let have = 0;
  for await (const c of body as AsyncIterable<Buffer | Uint8Array | string>) {
    // Readable.from(string) and object-mode streams hand over strings or plain Uint8Arrays.
    const chunk = typeof c === 'string' ? Buffer.from(c) : Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength);
    let off = 0;
    while (off < chunk.length) {
      buf ??= free.pop() ?? Buffer.allocUnsafeSlow(partSize);
      if (have === buf.length) {
        const bigger = Buffer.allocUnsafeSlow(Math.min(partSize, buf.length * 2));
        buf.copy(bigger, 0, 0, have);
        buf = bigger;
      }
      const n = chunk.copy(buf, have, off);
      have += n;
      off += n;
      if (have === partSize) {
        yield part(buf, have);
        buf = null;
        have = 0;
      }
    }
  }
  if (have > 0 && buf) yield part(buf, have);
}

/** Every part the store lists for the upload, by number. */
async function listParts(storage: Storage, header: UploadStateHeader): Promise<Map<number, { etag: string; size: number }>> {
  const out = new Map<number, { etag: string; size: number }>();
  let marker: string | undefined;
  for (;;) {
    const page = await storage.client.send(
      new ListPartsCommand({ Bucket: header.bucket, Key: header.key, UploadId: header.uploadId, PartNumberMarker: marker }),
    );
    for (const p of page.Parts ?? []) {
      if (p.PartNumber !== undefined) out.set(p.PartNumber, { etag: p.ETag ?? '', size: p.Size ?? -1 });
    }
    if (!page.IsTruncated || !page.NextPartNumberMarker) return out;
    marker = page.NextPartNumberMarker;
  }
}

/** AbortMultipartUpload; the failure, if any (an upload already gone counts as aborted). */
async function abortUpload(storage: Storage, header: Pick<UploadStateHeader, 'bucket' | 'key' | 'uploadId'>): Promise<unknown> {
  try {
    await storage.client.send(new AbortMultipartUploadCommand({ Bucket: header.bucket, Key: header.key, UploadId: header.uploadId }));
    return undefined;
  } catch (err) {
    return isNoSuchUpload(err) ? undefined : err;
  }
}

/** Give up an interrupted upload: abort it on the store and forget it. Never throws. */
async function abandon(storage: Storage, header: UploadStateHeader, store: ResumeStore, logger: Logger | undefined): Promise<void> {
  const failure = await abortUpload(storage, header);
  if (failure !== undefined) {
    logger?.warn(
      { key: header.key, uploadId: header.uploadId, err: describeStoreError(failure) },
      'the interrupted multipart upload could not be aborted; it is left incomplete for the lifecycle rule or `stowage cleanup --multipart`',
    );
  }
  await store.clear().catch((err: unknown) => logger?.warn({ err, state: store.name }, 'the upload state could not be deleted'));
}

/** The interrupted upload to resume, checked against the store, or null (anything unusable is abandoned). */
async function loadResume(
  storage: Storage,
  options: UploadStreamOptions,
  store: ResumeStore,
  caps: StoreCapabilities,
): Promise<Resume | null> {
  const { key, logger } = options;
  let state: Awaited<ReturnType<ResumeStore['load']>>;
  try {
    state = await store.load();
  } catch (err) {
    logger?.warn({ key, err, state: store.name }, 'the upload state could not be read; uploading from zero');
    return null;
  }
  if (!state) return null;
  const restart = async (why: string): Promise<null> => {
    logger?.warn(
      { key, uploadId: state.uploadId, why },
      'not resuming the interrupted multipart upload: it is aborted and the upload starts from zero',
    );
    await abandon(storage, state, store, logger);
    return null;
  };
  if (!caps.listParts) return restart('the store does not implement ListParts, so the parts it holds cannot be checked');
  if (state.bucket !== storage.bucket || state.key !== key) return restart(`it is an upload of ${state.bucket}/${state.key}`);
  if (state.partSize !== storage.partSize) {
    return restart(`its parts are ${state.partSize} bytes and the configured part size is ${storage.partSize}`);
  }
  if (state.partChecksums !== caps.partChecksumSha256) return restart('it was created with another per-part checksum setting');

  startHashThread(); // a resumed attempt hashes in it; it starts while the parts are listed
  let listed: Map<number, { etag: string; size: number }>;
  try {
    listed = await listParts(storage, state);
  } catch (err) {
    if (isNoSuchUpload(err)) {
      logger?.info(
        { key, uploadId: state.uploadId },
        'the interrupted multipart upload is gone from the store (aborted, expired or completed): uploading from zero',
      );
      await store.clear().catch(() => {});
      return null;
    }
    if (isNotImplemented(err)) return restart(`ListParts is not implemented (${describeStoreError(err)})`);
    throw storeError(err, `upload of ${key}: listing the parts of the interrupted upload ${state.uploadId}`);
  }
  const parts = new Map<number, PartRecord>();
  for (const p of state.parts) {
    const l = listed.get(p.partNumber);
    // Recorded but not listed: the store lost it; it is sent again.
    if (!l) continue;
    if (unquoteEtag(l.etag) !== unquoteEtag(p.etag) || l.size !== p.size) {
      return restart(
        `part ${p.partNumber} on the store (ETag ${l.etag}, ${l.size} bytes) is not the recorded one (${p.etag}, ${p.size} bytes)`,
      );
    }
    parts.set(p.partNumber, p);
  }
  logger?.info(
    { key, uploadId: state.uploadId, recordedParts: state.parts.length, listedParts: listed.size, verifiable: parts.size },
    'resuming an interrupted multipart upload',
  );
  return { ...state, parts };
}

/**
 * SigV4 signs a request's payload by its SHA-256 (`x-amz-content-sha256`), and the SDK hashes a
 * Buffer body for it on the main thread. Where this upload already hashed the part (for a
 * checksum header or its resume record), the header carries that hash and the signer uses it:
 * one pass over the bytes instead of two. The store still checks the body against it.
 */
function signedWithHash<C extends UploadPartCommand | PutObjectCommand>(command: C, sha256Hex: string): C {
  if (!sha256Hex) return command;
  type Args = { request: { headers?: Record<string, string> } };
  type BuildStep = (next: (args: Args) => Promise<unknown>) => (args: Args) => Promise<unknown>;
  // The two commands' stacks differ only in their input and output types, which this step does not touch.
  const stack = command.middlewareStack as unknown as { add(step: BuildStep, options: { step: 'build'; name: string }): void };
  stack.add(
    (next) => async (args) => {
      if (args.request.headers) args.request.headers['x-amz-content-sha256'] = sha256Hex;
      return next(args);
    },
    { step: 'build', name: 'stowagePayloadHash' },
  );
  return command;
}

export async function uploadStream(storage: Storage, options: UploadStreamOptions): Promise<UploadResult> {
  const { key, signal, logger } = options;
  const store = options.resume ? boundedStore(options.resume) : null;
  const makeBody = options.body;
  if (store && typeof makeBody !== 'function') {
    throw new TypeError(
      `upload of ${key}: \`resume\` needs \`body\` as a function that makes the stream, so a changed source can start over`,
    );
  }
  signal?.throwIfAborted();
  const fresh = () => (typeof makeBody === 'function' ? makeBody() : makeBody);
  // The first parts are read (zipped, for an artifact) while the store is probed and an
  // interrupted upload is looked up: round trips that took 0.2-0.5 s of the pipeline's CPU time
  // before its first byte (docs/performance.md, "Artifact pipeline").
  let body = fresh();
  let parts = primed(partsOf(body, storage.partSize), storage.queueSize);
  let caps: StoreCapabilities;
  let resume: Resume | null;
  try {
    try {
      caps = await storeCapabilities(storage);
    } catch (err) {
      throw storeError(err, `upload of ${key}`);
    }
    resume = store ? await loadResume(storage, options, store, caps) : null;
  } catch (err) {
    // Ends the read-ahead too: its pending pull fails, and nothing takes it.
    body.destroy();
    throw err;
  }
  for (;;) {
    const outcome = await attempt(storage, options, body, parts, caps, store, resume);
    if (outcome.kind === 'done') return outcome.result;
    // Only a resumed attempt can find the source changed; the fresh one after it cannot.
    logger?.warn(
      { key, uploadId: resume?.uploadId, reason: outcome.reason },
      'the source changed since the interrupted attempt: its multipart upload is aborted and the upload starts from zero',
    );
    if (resume && store) await abandon(storage, resume, store, logger);
    resume = null;
    body = fresh();
    parts = partsOf(body, storage.partSize);
  }
}

/**
 * `source`, with its first `n` items pulled at once, before anyone asks: the caller has round
 * trips to make before it takes them. Only those n are read ahead, so a consumer that takes a
 * part only when one of its n slots is free still holds at most n + 1 part buffers.
 */
function primed<T>(source: AsyncGenerator<T>, n: number): AsyncGenerator<T> {
  const early: Promise<IteratorResult<T>>[] = [];
  let taking = false;
  const pull = () => {
    if (taking || early.length >= n) return;
    const next = source.next();
    early.push(next);
    // Taken in order by the consumer, which sees a failure; this only keeps it from being "unhandled".
    next.then(
      (r) => (r.done ? undefined : pull()),
      () => {},
    );
  };
  pull();
  return (async function* () {
    taking = true;
    let delegated = false;
    try {
      while (early.length) {
        const r = await early.shift()!;
        if (r.done) return;
        yield r.value;
      }
      delegated = true;
      yield* source;
    } finally {
      // A consumer that stops early (a failure, a changed source) closes the source too; not
      // awaited, since a pull may still be waiting on the body, which the consumer destroys next.
      if (!delegated) source.return(undefined).catch(() => {});
    }
  })();
}

/** One pass over a fresh stream: resume `resume` (if given) or upload from zero. */
async function attempt(
  storage: Storage,
  options: UploadStreamOptions,
  body: Readable,
  /** `body` cut into parts (the first attempt's read ahead while the store was probed). */
  parts: AsyncGenerator<Part>,
  caps: StoreCapabilities,
  store: ResumeStore | null,
  resume: Resume | null,
): Promise<Outcome> {
  const { key, signal, logger } = options;
  const { bucket, partSize } = storage;
  const record = uploadRecorder(options.metrics);
  const checksums = caps.partChecksumSha256;
  // Where the store cannot list parts, a record could never be checked: nothing is kept.
  const persist = caps.listParts ? store : null;
  const requestOptions = signal ? { abortSignal: signal } : {};

  // A resumed attempt sends nothing while it re-checks the stored parts, so its pace is the
  // hashing's: both SHA-256 passes run in the hash thread, beside the zip (part-hasher.ts). A
  // fresh one hashes here, as it sends.
  const hasher = resume ? new UploadHasher() : null;
  const whole = createHash('sha256');
  const partHashes = checksums || persist !== null || resume !== null;
  const hashPart = (part: Buffer): Promise<{ sha256: string; data: Buffer }> => {
    if (hasher) return hasher.part(part);
    whole.update(part);
    // A part's own SHA-256 serves its checksum header, its payload signature and its resume
    // record; an upload that uses none of them leaves the signature's hash to the SDK.
    return Promise.resolve({ sha256: partHashes ? createHash('sha256').update(part).digest('hex') : '', data: part });
  };
  let size = 0;
  let acknowledged = 0;
  let uploadId = resume?.uploadId;
  let etag: string | null = null;
  let resumedParts = 0;
  let resumedBytes = 0;
  let sentParts = 0;
  const completed: CompletedPart[] = [];
  const inFlight = new Set<Promise<void>>();
  /** The recorded parts among them, being checked against their records. */
  const verifying = new Set<Promise<void>>();
  let failure: unknown;
  /** Why the stream is not the interrupted attempt's (a recorded part hashed differently). */
  let mismatch: string | undefined;
  let persistWarned = false;

  const fail = (err: unknown) => {
    failure ??= err;
    body.destroy();
  };
  const onAbort = () => fail(signal?.reason ?? Object.assign(new Error('upload aborted'), { name: 'AbortError' }));
  signal?.addEventListener('abort', onAbort, { once: true });
  const acknowledge = (bytes: number) => {
    acknowledged += bytes;
    options.onProgress?.(acknowledged);
  };
  const persistFailed = (err: unknown) => {
    // Not fatal: the upload goes on; a later attempt sends the unrecorded parts again.
    if (!persistWarned)
      logger?.warn({ key, err, state: store?.name }, 'the upload state could not be written; a resume would resend those parts');
    persistWarned = true;
  };

  const begin = async () => {
    const out = await storage.client.send(
      new CreateMultipartUploadCommand({
        Bucket: bucket,
        Key: key,
        ...objectHeaders(options),
        ...(checksums ? { ChecksumAlgorithm: 'SHA256' as const } : {}),
      }),
      requestOptions,
    );
    if (!out.UploadId) throw new StowageError('STOWAGE_ERR_STORE', `upload of ${key}: CreateMultipartUpload answered without an UploadId`);
    uploadId = out.UploadId;
    await persist
      ?.begin({ v: 1, bucket, key, uploadId, partSize, partChecksums: checksums, startedAt: new Date().toISOString() })
      .catch(persistFailed);
  };

  const sendPart = async (partNumber: number, data: Buffer, sha256: string) => {
    const checksum = checksums ? { ChecksumSHA256: hexToBase64(sha256) } : {};
    const out = await storage.client.send(
      signedWithHash(
        new UploadPartCommand({
          Bucket: bucket,
          Key: key,
          UploadId: uploadId,
          PartNumber: partNumber,
          Body: data,
          ContentLength: data.length,
          ...checksum,
        }),
        sha256,
      ),
      requestOptions,
    );
    if (!out.ETag) throw new StowageError('STOWAGE_ERR_STORE', `upload of ${key}: part ${partNumber} was answered without an ETag`);
    completed.push({ PartNumber: partNumber, ETag: out.ETag, ...checksum });
    sentParts++;
    await persist?.addPart({ partNumber, etag: out.ETag, size: data.length, sha256 }).catch(persistFailed);
    acknowledge(data.length);
  };

  /** Stop reading, let the parts in flight settle (they belong to the upload about to be aborted). */
  const changed = async (reason: string): Promise<Outcome> => {
    body.destroy();
    await Promise.allSettled(inFlight);
    hasher?.dispose();
    return { kind: 'changed', reason };
  };

  /** A part of the interrupted attempt, regenerated: its hash must be the one recorded when it was sent. */
  const verifyPart = (partNumber: number, data: Buffer, sha256: string, recorded: PartRecord) => {
    if (recorded.sha256 !== sha256 || recorded.size !== data.length) {
      mismatch ??= `part ${partNumber} (${data.length} bytes) does not hash to the SHA-256 recorded when it was sent`;
      body.destroy();
      return;
    }
    completed.push({ PartNumber: partNumber, ETag: recorded.etag, ...(checksums ? { ChecksumSHA256: hexToBase64(sha256) } : {}) });
    resumedParts++;
    resumedBytes += data.length;
    acknowledge(data.length);
  };

  try {
    let partNumber = 0;
    let single = false;
    for await (const { data: part, release } of parts) {
      if (failure !== undefined || mismatch !== undefined) break;
      partNumber++;
      size += part.length;
      if (partNumber === 1 && part.length < partSize && !resume) {
        // The whole body fits in one part (only the last part is short): one PutObject.
        const { sha256 } = await hashPart(part);
        const out = await storage.client.send(
          signedWithHash(
            new PutObjectCommand({
              Bucket: bucket,
              Key: key,
              Body: part,
              ContentLength: part.length,
              ...objectHeaders(options),
              ...(checksums ? { ChecksumSHA256: hexToBase64(sha256) } : {}),
            }),
            sha256,
          ),
          requestOptions,
        );
        etag = out.ETag ?? null;
        single = true;
        acknowledge(part.length);
        release();
        continue;
      }
      // In a resumed attempt the next part is assembled while the thread hashes this one.
      const hashed = hashPart(part);
      const recorded = resume?.parts.get(partNumber);
      if (!recorded && !uploadId) await begin();
      // Nothing new is sent until the recorded parts before it have checked out: a changed
      // source must not cost a part sent into the upload that is about to be aborted.
      if (!recorded && verifying.size) await Promise.all(verifying);
      while (inFlight.size >= storage.queueSize) await Promise.race(inFlight);
      if (failure !== undefined || mismatch !== undefined) break;
      const n = partNumber;
      // Released once the store has the part (or it was verified): a failed part's buffer is never refilled.
      const handled: Promise<void> = hashed
        .then(async ({ sha256, data }) => {
          if (recorded) verifyPart(n, data, sha256, recorded);
          else await sendPart(n, data, sha256);
          release(data);
        })
        .catch(fail)
        .finally(() => {
          inFlight.delete(handled);
          verifying.delete(handled);
        });
      inFlight.add(handled);
      if (recorded) verifying.add(handled);
    }
    await Promise.all(inFlight);
    if (failure !== undefined) throw failure;
    if (mismatch !== undefined) return await changed(mismatch);

    if (resume) {
      const beyond = [...resume.parts.keys()].find((n) => n > partNumber);
      if (beyond !== undefined) return await changed(`the stream now ends at part ${partNumber}, and part ${beyond} was recorded`);
    }
    if (partNumber === 0) {
      // An empty body: an empty object.
      const out = await storage.client.send(
        new PutObjectCommand({ Bucket: bucket, Key: key, Body: Buffer.alloc(0), ContentLength: 0, ...objectHeaders(options) }),
        requestOptions,
      );
      etag = out.ETag ?? null;
    } else if (!single) {
      completed.sort((a, b) => a.PartNumber! - b.PartNumber!);
      const out = await storage.client.send(
        new CompleteMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId, MultipartUpload: { Parts: completed } }),
        requestOptions,
      );
      etag = out.ETag ?? null;
      // The upload id is spent: a crash from here on uploads from zero (ListParts: NoSuchUpload).
      await persist?.clear().catch(persistFailed);
    }
  } catch (err) {
    // A mismatch destroys the body, which can end the loop with a premature-close error.
    if (mismatch !== undefined && failure === undefined) return await changed(mismatch);
    const cause = failure ?? err;
    body.destroy();
    await Promise.allSettled(inFlight);
    hasher?.dispose();
    const aborted = signal?.aborted === true;
    record(aborted ? 'aborted' : 'error', size);
    let what = `upload of ${key} failed`;
    if (uploadId) {
      // Not with the job's signal: the abort must still be sent when the worker is shutting down.
      const abortFailure = await abortUpload(storage, { bucket, key, uploadId });
      await store?.clear().catch(() => {});
      if (abortFailure !== undefined) {
        const detail = isNotImplemented(abortFailure)
          ? 'the store does not implement AbortMultipartUpload'
          : `AbortMultipartUpload failed: ${describeStoreError(abortFailure)}`;
        what += ` and its multipart upload ${uploadId} is left incomplete (${detail}); a bucket lifecycle rule (AbortIncompleteMultipartUpload) or \`stowage cleanup --multipart\` removes it`;
        logger?.error(
          { key, uploadId, err: describeStoreError(abortFailure) },
          'multipart upload could not be aborted; it is left incomplete',
        );
      }
    }
    if (aborted) throw new StowageError('STOWAGE_ERR_STORE', `${what}: aborted (${describeStoreError(cause)})`, { cause });
    throw storeError(cause, what);
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }

  if (resume) {
    logger?.info(
      { key, uploadId, resumedParts, sentParts, resumedBytes },
      'resumed upload completed: the parts an interrupted attempt had stored were verified and not sent again',
    );
  }
  const sha256 = hasher ? await hasher.digest() : whole.digest('hex');
  const result = await finishUpload(storage, options, { size, sha256, etag, uploadId, resumedParts }, record);
  return { kind: 'done', result };
}
