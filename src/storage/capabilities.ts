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
    await sweepAbandonedProbes(storage);
    // create-only
    const fresh = `${base}create-only`;
    let createOnly = false;
    const first = await attempt(() => put(fresh, 'probe', { IfNoneMatch: '*' }));
    if (!first.ok) evidence.createOnly = `a new key with If-None-Match: * was refused (${describe(first.err)})`;
    else {
      const again = await attempt(() => put(fresh, 'probe', { IfNoneMatch: '*' }));
      if (again.ok) evidence.createOnly = 'If-None-Match: * on an existing key was written over (header ignored)';
      else if (isPreconditionFailed(again.err)) {
        createOnly = true;
        evidence.createOnly = 'new key written; existing key refused with 412';
      } else evidence.createOnly = `If-None-Match: * on an existing key: ${describe(again.err)}`;
    }
    // A plain write too, so the rest of the probe has an object even where that header is refused.
    const object = `${base}cas`;
    const created = await put(object, 'probe');

    // compare-and-swap
    let compareAndSwap: EtagForm | null = null;
    const wrong = await attempt(() => put(object, 'probe', { IfMatch: '"00000000000000000000000000000000"' }));
    if (wrong.ok) evidence.compareAndSwap = 'a wrong If-Match ETag was written over (header ignored)';
    else if (!isPreconditionFailed(wrong.err)) evidence.compareAndSwap = `a wrong If-Match ETag: ${describe(wrong.err)}`;
    else {
      const etag = created.ETag ?? (await client.send(new HeadObjectCommand({ Bucket: bucket, Key: object }))).ETag ?? '';
      const seen: string[] = ['wrong ETag 412'];
      for (const form of ['quoted', 'unquoted'] as const) {
        // Same body, so the ETag stays the same for the next form.
        const right = await attempt(() => put(object, 'probe', { IfMatch: etagForIfMatch(etag, form) }));
        if (right.ok) {
          compareAndSwap = form;
          seen.push(`${form} ETag written`);
          break;
        }
        seen.push(`${form} ETag ${describe(right.err)}`);
      }
      evidence.compareAndSwap = seen.join('; ');
    }

    // multipart: create (asking for SHA-256 part checksums), a part with a wrong checksum, the part, list, complete
    const mpKey = `${base}multipart`;
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
    let partChecksumSha256 = false;
    let listParts = false;
    let multipartList = false;
    let completeEtag = false;
    let multipartAbort = false;
    if (!create.ok) {
      const why = `CreateMultipartUpload: ${describe(create.err)}`;
      Object.assign(evidence, { partChecksumSha256: why, listParts: why, multipartList: why, completeEtag: why, multipartAbort: why });
    } else {
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
          partChecksumSha256 = true;
          evidence.partChecksumSha256 = `a part with a wrong checksum was refused (${describe(bad.err)})`;
        }
      }
      const uploaded = await send(partChecksumSha256 ? sha(part) : undefined);
      const parts = await attempt(() => client.send(new ListPartsCommand({ Bucket: bucket, Key: mpKey, UploadId: uploadId })));
      listParts = parts.ok && (parts.value.Parts ?? []).some((p) => p.PartNumber === 1);
      evidence.listParts = parts.ok ? `${parts.value.Parts?.length ?? 0} part(s) listed` : describe(parts.err);
      const listed = await attempt(() => client.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: base })));
      multipartList = listed.ok && (listed.value.Uploads ?? []).some((u) => u.UploadId === uploadId);
      evidence.multipartList = listed.ok
        ? multipartList
          ? 'the open upload is listed'
          : 'the open upload is missing from the listing'
        : describe(listed.err);
      const done = await client.send(
        new CompleteMultipartUploadCommand({
          Bucket: bucket,
          Key: mpKey,
          UploadId: uploadId,
          MultipartUpload: {
            Parts: [{ PartNumber: 1, ETag: uploaded.ETag!, ...(partChecksumSha256 ? { ChecksumSHA256: sha(part) } : {}) }],
          },
        }),
      );
      uploads.pop();
      written.add(mpKey);
      completeEtag = Boolean(done.ETag && unquoteEtag(done.ETag));
      evidence.completeEtag = completeEtag ? 'present' : `empty (${JSON.stringify(done.ETag ?? null)}); HEAD has it`;

      const second = await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: `${mpKey}-abort` }));
      uploads.push({ key: `${mpKey}-abort`, id: second.UploadId! });
      const aborted = await attempt(() =>
        client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: `${mpKey}-abort`, UploadId: second.UploadId! })),
      );
      if (!aborted.ok) evidence.multipartAbort = describe(aborted.err);
      else {
        uploads.pop();
        multipartAbort = true;
        evidence.multipartAbort = 'aborted';
        if (multipartList) {
          const after = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: base }));
          if ((after.Uploads ?? []).some((u) => u.UploadId === second.UploadId)) {
            multipartAbort = false;
            evidence.multipartAbort = 'answered, but the upload is still listed';
          } else evidence.multipartAbort = 'aborted; no longer listed';
        }
      }
    }

    // lifecycle: read only, never changes the bucket's rules
    const lc = await attempt(() => client.send(new GetBucketLifecycleConfigurationCommand({ Bucket: bucket })));
    const lifecycle = lc.ok || (lc.err as Error).name === 'NoSuchLifecycleConfiguration' || statusOf(lc.err) === 404;
    evidence.lifecycle = lc.ok ? `${lc.value.Rules?.length ?? 0} rule(s) configured` : lifecycle ? 'none configured' : describe(lc.err);

    // ListObjectsV2 paging: two objects under `base` at least, one per page
    let listObjectsV2 = false;
    // The store answered everything above, so an error here (s3rver answers 500, after the SDK's
    // retries, to any truncated V2 page: it builds the token with DES, which OpenSSL 3 refuses)
    // means the paging is broken, not the store.
    const p1 = await attempt(() => client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: base, MaxKeys: 1 })), {
      serverErrorMeansNo: true,
    });
    if (!p1.ok) evidence.listObjectsV2 = describe(p1.err);
    else if (!p1.value.IsTruncated || !p1.value.NextContinuationToken)
      evidence.listObjectsV2 = 'the first page of one key was not truncated';
    else {
      const token = p1.value.NextContinuationToken;
      const p2 = await attempt(
        () => client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: base, MaxKeys: 1, ContinuationToken: token })),
        {
          serverErrorMeansNo: true,
        },
      );
      listObjectsV2 = p2.ok && Boolean(p2.value.Contents?.[0]?.Key) && p2.value.Contents![0]!.Key !== p1.value.Contents?.[0]?.Key;
      evidence.listObjectsV2 = p2.ok
        ? listObjectsV2
          ? 'second page follows the token'
          : 'the second page repeats the first'
        : `second page: ${describe(p2.err)}`;
    }

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
