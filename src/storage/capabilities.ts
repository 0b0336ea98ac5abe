/**
 * What a store really does, probed once per process and store (endpoint + bucket), never assumed
 * from its name. Every choice that depends on the store reads this one table:
 * - manifests (manifest.ts): conditional writes in the If-Match form the store honours, else the
 *   Redis fenced lock;
 * - uploads (upload.ts): per-part `x-amz-checksum-sha256` where the store verifies it; the ETag
 *   from HEAD where CompleteMultipartUpload's answer has none;
 * - listings (verify.ts): ListObjectsV2 continuation tokens where they work, else V1 markers;
 * - `stowage verify --capabilities` prints it.
 *
 * Why each probe proves the behaviour rather than the header's acceptance:
 * - compare-and-swap: a store that answers 412 to a *wrong* ETag may still answer 412 to the right
 *   one (radosgw 16 and DigitalOcean Spaces compare the header byte for byte with the unquoted
 *   ETag they store, so the quoted ETag they returned themselves never matches). So the probe
 *   needs a write with the correct ETag to succeed, trying the quoted and then the unquoted form.
 * - create-only: a new key with `If-None-Match: *` must be written and the same write again
 *   refused with 412.
 * - per-part SHA-256: a part sent with a wrong checksum must be refused; a store that ignores the
 *   header (radosgw 16, s3rver) gains nothing from it.
 * - lifecycle: reading the bucket's configuration (200, or 404 NoSuchLifecycleConfiguration) shows
 *   the API is there without touching the bucket's rules.
 * Probe objects live under `_stowage/capabilities/` and are deleted afterwards. A probe that fails
 * for a reason other than "not supported" (store down, credentials refused) rejects and is not
 * cached, so the next caller probes again.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetBucketLifecycleConfigurationCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsCommand,
  ListObjectsV2Command,
  ListPartsCommand,
  PutObjectCommand,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import type { Storage } from './client.js';
import { CAPABILITY_PROBE_PREFIX } from './keys.js';
import { isPreconditionFailed, statusOf, storeError } from './store-errors.js';

/** The If-Match form a store honours: the ETag as it returned it (quoted), or without quotes. */
export type EtagForm = 'quoted' | 'unquoted';

export interface StoreCapabilities {
  /** PUT with `If-None-Match: *` creates a new key and is refused (412) when the key exists. */
  createOnly: boolean;
  /** PUT with `If-Match` succeeds with the current ETag in this form and fails (412) with another; null: not enforced. */
  compareAndSwap: EtagForm | null;
  /** ListMultipartUploads lists an incomplete upload. */
  multipartList: boolean;
  /** AbortMultipartUpload removes an incomplete upload. */
  multipartAbort: boolean;
  /** ListParts lists an upload's parts. */
  listParts: boolean;
  /** The bucket lifecycle configuration API answers. */
  lifecycle: boolean;
  /** CompleteMultipartUpload's answer carries the object's ETag. */
  completeEtag: boolean;
  /** A part with a wrong `x-amz-checksum-sha256` is refused, so per-part checksums are verified in transit. */
  partChecksumSha256: boolean;
  /** ListObjectsV2 pages with continuation tokens. */
  listObjectsV2: boolean;
}

export type CapabilityName = keyof StoreCapabilities;

export interface CapabilityReport {
  endpoint: string;
  bucket: string;
  capabilities: StoreCapabilities;
  /** Per capability, what the probe saw (for `stowage verify --capabilities`). */
  evidence: Record<CapabilityName, string>;
  probedAt: string;
}

/** Display order and labels of `stowage verify --capabilities` (and docs/storage.md). */
export const CAPABILITY_LABELS: Record<CapabilityName, string> = {
  createOnly: 'create-only writes (If-None-Match: *)',
  compareAndSwap: 'compare-and-swap (If-Match)',
  multipartList: 'ListMultipartUploads',
  multipartAbort: 'AbortMultipartUpload',
  listParts: 'ListParts',
  lifecycle: 'lifecycle configuration',
  completeEtag: 'ETag in CompleteMultipartUpload',
  partChecksumSha256: 'per-part x-amz-checksum-sha256',
  listObjectsV2: 'ListObjectsV2 continuation',
};

/** `yes`, `no`, or `yes (unquoted ETag)`: the cells of `verify --capabilities` and docs/storage.md. */
export function formatCapability(value: StoreCapabilities[CapabilityName]): string {
  if (value === true) return 'yes';
  if (value === false || value === null) return 'no';
  return `yes (${value} ETag)`;
}

function describe(err: unknown): string {
  const status = statusOf(err);
  return `${(err as Error | null)?.name ?? 'Error'}${status ? ` ${status}` : ''}`;
}

/** Errors that mean "the store cannot be used at all", not "this feature is missing". */
function isFatal(err: unknown): boolean {
  const status = statusOf(err);
  const name = (err as Error | null)?.name ?? '';
  if (status === undefined) return true; // no HTTP answer: connection refused, reset, timeout
  if (status >= 500 && status !== 501) return true;
  return ['InvalidAccessKeyId', 'SignatureDoesNotMatch', 'NoSuchBucket'].includes(name);
}

/** `"abc"` → `abc`. */
export function unquoteEtag(etag: string): string {
  return etag.replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
}

/** The ETag as `form` wants it in an If-Match header. */
export function etagForIfMatch(etag: string, form: EtagForm): string {
  const bare = unquoteEtag(etag);
  return form === 'quoted' ? `"${bare}"` : bare;
}

/**
 * Run `fn`; a fatal error rethrows (the probe fails and is not cached), any other error is the
 * store saying no, recorded as `false` with what it answered.
 */
async function attempt<T>(
  fn: () => Promise<T>,
  options: { serverErrorMeansNo?: boolean } = {},
): Promise<{ ok: true; value: T } | { ok: false; err: unknown }> {
  try {
    return { ok: true, value: await fn() };
  } catch (err) {
    const serverError = (statusOf(err) ?? 0) >= 500;
    if (isFatal(err) && !(options.serverErrorMeansNo && serverError)) throw err;
    return { ok: false, err };
  }
}

export async function probeCapabilities(storage: Storage): Promise<CapabilityReport> {
  const { client, bucket } = storage;
  const base = `${CAPABILITY_PROBE_PREFIX}${Date.now().toString(36)}-${randomBytes(4).toString('hex')}/`;
  const written = new Set<string>();
  const uploads: Array<{ key: string; id: string }> = [];
  const evidence = {} as Record<CapabilityName, string>;
  const put = async (key: string, body: string, extra: { IfMatch?: string; IfNoneMatch?: string } = {}) => {
    const out = await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: 'text/plain', ...extra }));
    written.add(key);
    return out;
  };

  try {
    // Independent groups run at once: each is a chain of round trips, and one after another they
    // were ~20 before a cold worker's first upload could start (1.3 s at 30 ms). The listing
    // check needs the objects the first two groups write, so it follows them.
    const sweep = sweepAbandonedProbes(storage);
    const createOnlyProbe = async (): Promise<boolean> => {
      const fresh = `${base}create-only`;
      const first = await attempt(() => put(fresh, 'probe', { IfNoneMatch: '*' }));
      if (!first.ok) {
        evidence.createOnly = `a new key with If-None-Match: * was refused (${describe(first.err)})`;
        return false;
      }
      const again = await attempt(() => put(fresh, 'probe', { IfNoneMatch: '*' }));
      if (again.ok) evidence.createOnly = 'If-None-Match: * on an existing key was written over (header ignored)';
      else if (isPreconditionFailed(again.err)) {
        evidence.createOnly = 'new key written; existing key refused with 412';
        return true;
      } else evidence.createOnly = `If-None-Match: * on an existing key: ${describe(again.err)}`;
      return false;
    };
    const compareAndSwapProbe = async (): Promise<EtagForm | null> => {
      // A plain write, so this group has an object even where If-None-Match is refused.
      const object = `${base}cas`;
      const created = await put(object, 'probe');
      const wrong = await attempt(() => put(object, 'probe', { IfMatch: '"00000000000000000000000000000000"' }));
      if (wrong.ok) {
        evidence.compareAndSwap = 'a wrong If-Match ETag was written over (header ignored)';
        return null;
      }
      if (!isPreconditionFailed(wrong.err)) {
        evidence.compareAndSwap = `a wrong If-Match ETag: ${describe(wrong.err)}`;
        return null;
      }
      const etag = created.ETag ?? (await client.send(new HeadObjectCommand({ Bucket: bucket, Key: object }))).ETag ?? '';
      const seen: string[] = ['wrong ETag 412'];
      let found: EtagForm | null = null;
      for (const form of ['quoted', 'unquoted'] as const) {
        // Same body, so the ETag stays the same for the next form.
        const right = await attempt(() => put(object, 'probe', { IfMatch: etagForIfMatch(etag, form) }));
        if (right.ok) {
          found = form;
          seen.push(`${form} ETag written`);
          break;
        }
        seen.push(`${form} ETag ${describe(right.err)}`);
      }
      evidence.compareAndSwap = seen.join('; ');
      return found;
    };
    const lifecycleProbe = async (): Promise<boolean> => {
      // Read only: never changes the bucket's rules.
      const lc = await attempt(() => client.send(new GetBucketLifecycleConfigurationCommand({ Bucket: bucket })));
      const answered = lc.ok || (lc.err as Error).name === 'NoSuchLifecycleConfiguration' || statusOf(lc.err) === 404;
      evidence.lifecycle = lc.ok ? `${lc.value.Rules?.length ?? 0} rule(s) configured` : answered ? 'none configured' : describe(lc.err);
      return answered;
    };
    const listingProbe = async (): Promise<boolean> => {
      // ListObjectsV2 paging over the two objects (at least) the groups above wrote under `base`,
      // one per page. The store answered those, so an error here (s3rver answers 500, after the
      // SDK's retries, to any truncated V2 page: it builds the token with DES, which OpenSSL 3
      // refuses) means the paging is broken, not the store.
      const p1 = await attempt(() => client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: base, MaxKeys: 1 })), {
        serverErrorMeansNo: true,
      });
      if (!p1.ok) {
        evidence.listObjectsV2 = describe(p1.err);
        return false;
      }
      if (!p1.value.IsTruncated || !p1.value.NextContinuationToken) {
        evidence.listObjectsV2 = 'the first page of one key was not truncated';
        return false;
      }
      const token = p1.value.NextContinuationToken;
      const p2 = await attempt(
        () => client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: base, MaxKeys: 1, ContinuationToken: token })),
        { serverErrorMeansNo: true },
      );
      const ok = p2.ok && Boolean(p2.value.Contents?.[0]?.Key) && p2.value.Contents![0]!.Key !== p1.value.Contents?.[0]?.Key;
      evidence.listObjectsV2 = p2.ok
        ? ok
          ? 'second page follows the token'
          : 'the second page repeats the first'
        : `second page: ${describe(p2.err)}`;
      return ok;
    };
    const forget = (id: string) => {
      const i = uploads.findIndex((u) => u.id === id);
      if (i >= 0) uploads.splice(i, 1);
    };
    const mpKey = `${base}multipart`;
    // Multipart: create (asking for SHA-256 part checksums), a part with a wrong checksum, the
    // part, list parts, list uploads, complete.
    const multipartProbe = async () => {
      const found = { partChecksumSha256: false, listParts: false, multipartList: false, completeEtag: false };
      const part = Buffer.from('stowage capability probe part\n');
      const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('base64');
      let asked = true;
      let create = await attempt(() =>
        client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: mpKey, ChecksumAlgorithm: 'SHA256' })),
      );
      if (!create.ok) {
        asked = false;
        create = await attempt(() => client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: mpKey })));
      }
      if (!create.ok) {
        const why = `CreateMultipartUpload: ${describe(create.err)}`;
        Object.assign(evidence, { partChecksumSha256: why, listParts: why, multipartList: why, completeEtag: why });
        return found;
      }
      const uploadId = create.value.UploadId!;
      uploads.push({ key: mpKey, id: uploadId });
      const send = (checksum?: string) =>
        client.send(
          new UploadPartCommand({
            Bucket: bucket,
            Key: mpKey,
            UploadId: uploadId,
            PartNumber: 1,
            Body: part,
            ...(checksum ? { ChecksumSHA256: checksum } : {}),
          }),
        );
      if (!asked) evidence.partChecksumSha256 = 'CreateMultipartUpload with ChecksumAlgorithm SHA256 was refused';
      else {
        const bad = await attempt(() => send(sha('something else')));
        if (bad.ok) evidence.partChecksumSha256 = 'a part with a wrong x-amz-checksum-sha256 was stored (not verified)';
        else {
          found.partChecksumSha256 = true;
          evidence.partChecksumSha256 = `a part with a wrong checksum was refused (${describe(bad.err)})`;
        }
      }
      const uploaded = await send(found.partChecksumSha256 ? sha(part) : undefined);
      const parts = await attempt(() => client.send(new ListPartsCommand({ Bucket: bucket, Key: mpKey, UploadId: uploadId })));
      found.listParts = parts.ok && (parts.value.Parts ?? []).some((p) => p.PartNumber === 1);
      evidence.listParts = parts.ok ? `${parts.value.Parts?.length ?? 0} part(s) listed` : describe(parts.err);
      const listed = await attempt(() => client.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: base })));
      found.multipartList = listed.ok && (listed.value.Uploads ?? []).some((u) => u.UploadId === uploadId);
      evidence.multipartList = listed.ok
        ? found.multipartList
          ? 'the open upload is listed'
          : 'the open upload is missing from the listing'
        : describe(listed.err);
      const done = await client.send(
        new CompleteMultipartUploadCommand({
          Bucket: bucket,
          Key: mpKey,
          UploadId: uploadId,
          MultipartUpload: {
            Parts: [{ PartNumber: 1, ETag: uploaded.ETag!, ...(found.partChecksumSha256 ? { ChecksumSHA256: sha(part) } : {}) }],
          },
        }),
      );
      forget(uploadId);
      written.add(mpKey);
      found.completeEtag = Boolean(done.ETag && unquoteEtag(done.ETag));
      evidence.completeEtag = found.completeEtag ? 'present' : `empty (${JSON.stringify(done.ETag ?? null)}); HEAD has it`;
      return found;
    };
    // Abort: a second upload, aborted, then looked for in a listing (read only where the listing
    // works, which multipartProbe finds out).
    const abortProbe = async (): Promise<{ aborted: boolean; listedAfter: boolean; evidence: string }> => {
      const key = `${mpKey}-abort`;
      const second = await attempt(() => client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key })));
      if (!second.ok) return { aborted: false, listedAfter: false, evidence: `CreateMultipartUpload: ${describe(second.err)}` };
      const id = second.value.UploadId!;
      uploads.push({ key, id });
      const aborted = await attempt(() => client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: id })));
      if (!aborted.ok) return { aborted: false, listedAfter: false, evidence: describe(aborted.err) };
      forget(id);
      const after = await attempt(() => client.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: base })));
      return { aborted: true, listedAfter: after.ok && (after.value.Uploads ?? []).some((u) => u.UploadId === id), evidence: 'aborted' };
    };
    const objects = Promise.all([createOnlyProbe(), compareAndSwapProbe()]);
    // Settled, not all: on a fatal error the other groups still finish before the cleanup below,
    // so none writes a probe object after it.
    const settled = await Promise.allSettled([
      objects,
      multipartProbe(),
      abortProbe(),
      lifecycleProbe(),
      objects.then(listingProbe),
      sweep,
    ]);
    const failed = settled.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    const value = <T>(r: PromiseSettledResult<T>) => (r as PromiseFulfilledResult<T>).value;
    const [createOnly, compareAndSwap] = value(settled[0]);
    const [multipart, abort, lifecycle, listObjectsV2] = [value(settled[1]), value(settled[2]), value(settled[3]), value(settled[4])];
    const { partChecksumSha256, listParts, multipartList, completeEtag } = multipart;
    // The aborted upload must be gone from a listing that works (multipartProbe says whether it does).
    let multipartAbort = abort.aborted;
    if (!abort.aborted) evidence.multipartAbort = abort.evidence;
    else if (!multipartList) evidence.multipartAbort = 'aborted';
    else if (abort.listedAfter) {
      multipartAbort = false;
      evidence.multipartAbort = 'answered, but the upload is still listed';
    } else evidence.multipartAbort = 'aborted; no longer listed';

    return {
      endpoint: storage.endpoint,
      bucket,
      capabilities: {
        createOnly,
        compareAndSwap,
        multipartList,
        multipartAbort,
        listParts,
        lifecycle,
        completeEtag,
        partChecksumSha256,
        listObjectsV2,
      },
      evidence,
      probedAt: new Date().toISOString(),
    };
  } catch (err) {
    throw storeError(err, "probing the store's capabilities");
  } finally {
    await Promise.all([
      ...uploads.map((u) => client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: u.key, UploadId: u.id })).catch(() => {})),
      ...[...written].map((key) => client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key })).catch(() => {})),
    ]);
  }
}

/**
 * A process killed mid-probe leaves its objects (and an upload, which `cleanup --multipart` and
 * the abort-incomplete lifecycle rule remove): the next probe deletes objects of probes over an
 * hour old. Best effort: a store that cannot list is probed all the same.
 */
async function sweepAbandonedProbes(storage: Storage): Promise<void> {
  const cutoff = Date.now() - 3_600_000;
  const page = await storage.client
    .send(new ListObjectsCommand({ Bucket: storage.bucket, Prefix: CAPABILITY_PROBE_PREFIX, MaxKeys: 1000 }))
    .catch(() => null);
  const stale = (page?.Contents ?? []).filter((o) => o.Key && (o.LastModified?.getTime() ?? Infinity) < cutoff);
  await Promise.all(
    stale.map((o) => storage.client.send(new DeleteObjectCommand({ Bucket: storage.bucket, Key: o.Key! })).catch(() => {})),
  );
}

const cache = new Map<string, Promise<CapabilityReport>>();

/** The store's capabilities, probed once per process and store; a failed probe is not cached. */
export function storeCapabilities(storage: Storage): Promise<StoreCapabilities> {
  return capabilityReport(storage).then((r) => r.capabilities);
}

export function capabilityReport(storage: Storage): Promise<CapabilityReport> {
  const id = `${storage.endpoint}|${storage.bucket}`;
  let known = cache.get(id);
  if (!known) {
    known = probeCapabilities(storage);
    cache.set(id, known);
    known.catch(() => cache.delete(id));
  }
  return known;
}

/** Forget probe results (tests). */
export function resetCapabilities(): void {
  cache.clear();
}
