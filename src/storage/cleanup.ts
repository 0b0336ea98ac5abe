/**
 * Cleanup: delete what the selectors pick, and nothing else.
 *
 * - Scope: `prefix` (default the whole bucket). Every listing is made with it and every key is
 *   checked against it again before a delete, so nothing outside it is ever touched.
 * - Modes: with none of `orphanedPacks`, `multipart`, `enforceLifecycle`, the *objects* sweep runs:
 *   objects in scope, narrowed by `olderThanDays` and `testOnly` (it needs at least one of prefix,
 *   olderThanDays, testOnly: a bare run would empty the bucket). With mode flags, only those modes
 *   run, and prefix, olderThanDays (orphaned packs) and testOnly narrow them.
 * - Sidecars (`<key>.sha256`) are never selected for themselves while their object exists; they go
 *   with their object. A sidecar whose object is gone is treated as an object.
 * - Listing paginates; deletes go in DeleteObjects batches of at most 1000 keys.
 * - Multipart: incomplete uploads older than the threshold are aborted, then the store is listed
 *   again and stragglers (an abort that did not take) are aborted once more.
 * - Dry run: everything is listed and selected the same way; nothing is deleted or aborted.
 *
 * Storage imports no db: which versions exist is asked through `versionsExist`.
 */
import {
  AbortMultipartUploadCommand,
  DeleteObjectsCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  type MultipartUpload,
} from '@aws-sdk/client-s3';
import type { LifecycleRule } from '../config.js';
import { PermanentError, StowageError } from '../errors.js';
import type { Storage } from './client.js';
import { isSha256SidecarKey, PACK_KEY_PATTERN, sha256SidecarKey, SHA256_SIDECAR_SUFFIX } from './keys.js';
import { isExpired, ruleMatcher } from './lifecycle.js';
import { isNotImplemented, notImplementedError, statusOf, storeError } from './store-errors.js';
import { listObjects, type ListedObject } from './verify.js';

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
/** DeleteObjects takes at most 1000 keys per request. */
export const DELETE_BATCH = 1000;
/** A pack younger than this is never orphaned: its version row is written after the upload. */
export const ORPHAN_GRACE_MS = HOUR_MS;
/** Default age of a multipart upload before `multipart` aborts it (in-flight uploads are younger). */
export const DEFAULT_MULTIPART_HOURS = 24;
const HEAD_CONCURRENCY = 16;
const ABORT_CONCURRENCY = 8;
const MAX_ERROR_MESSAGES = 20;

export interface CleanupOptions {
  /** List and select only; delete nothing. */
  dryRun: boolean;
  prefix?: string | undefined;
  olderThanDays?: number | undefined;
  olderThanHours?: number | undefined;
  /** Only objects Stowage marked as test data (metadata `stowage-test: true`). */
  testOnly?: boolean | undefined;
  orphanedPacks?: boolean | undefined;
  multipart?: boolean | undefined;
  enforceLifecycle?: boolean | undefined;
  /**
   * Artifact retention (src/cleanup/artifact-retention.ts): needs project_versions, so the recorded
   * cleanup runs it; runCleanup here skips the mode.
   */
  artifactRetention?: boolean | undefined;
}

export type CleanupMode = 'objects' | 'orphaned-packs' | 'lifecycle' | 'multipart' | 'artifact-retention';

/** One project version's fate under artifact retention (dry runs print every one). */
export interface ArtifactVerdict {
  userId: string;
  projectId: string;
  versionId: string;
  createdAt: string;
  key: string;
  action: 'keep' | 'delete';
  reasons: string[];
}

export interface CleanupDeps {
  storage: Storage;
  /** Retention rules for enforceLifecycle (config.lifecycleRules). */
  rules?: LifecycleRule[];
  /**
   * For orphanedPacks: of the given (user, project, version) triples, the ones that exist in
   * project_versions, as `user/project/version` strings.
   */
  versionsExist?: (versions: Array<{ userId: string; projectId: string; versionId: string }>) => Promise<Set<string>>;
  /** Progress lines for long listings (the CLI prints them on stderr). */
  onProgress?: (message: string) => void;
  signal?: AbortSignal;
  /** The clock (tests). */
  now?: number;
}

export interface SelectedObject {
  key: string;
  size: number;
  lastModified: string;
  /** The mode (or lifecycle rule) that picked it; a sidecar's reason is its object's. */
  reason: string;
}

export interface SelectedUpload {
  key: string;
  uploadId: string;
  initiated: string | null;
  reason: string;
}

export interface CleanupReport {
  modes: CleanupMode[];
  dryRun: boolean;
  prefix: string | null;
  /** Keys listed in scope (sidecars included) plus incomplete multipart uploads listed. */
  scanned: number;
  /** Keys deleted plus uploads aborted (in a dry run: that would be). */
  deleted: number;
  bytesFreed: number;
  errors: number;
  /** What was (or would be) deleted, sidecars included. */
  objects: SelectedObject[];
  uploads: SelectedUpload[];
  /** Uploads found still open on the second listing and aborted again. */
  stragglers: number;
  perMode: Record<string, { deleted: number; bytesFreed: number }>;
  errorMessages: string[];
  /** Operations the store does not implement that a mode would have needed (not counted as errors). */
  unsupported: string[];
  /** Artifact retention: every version with an artifact, kept or deleted, with the reasons. */
  artifacts: ArtifactVerdict[];
}

export const MULTIPART_UNSUPPORTED_HINT =
  'incomplete uploads cannot be listed or aborted here; on R2, S3 and MinIO a lifecycle rule (AbortIncompleteMultipartUpload) also removes them';

/** Which modes run for these options; throws a usage error for a selection that would pick everything. */
export function cleanupModes(o: CleanupOptions): CleanupMode[] {
  const modes: CleanupMode[] = [];
  if (o.orphanedPacks) modes.push('orphaned-packs');
  if (o.enforceLifecycle) modes.push('lifecycle');
  if (o.multipart) modes.push('multipart');
  if (o.artifactRetention) modes.push('artifact-retention');
  if (modes.length) return modes;
  if (!o.prefix && o.olderThanDays === undefined && !o.testOnly) {
    throw new PermanentError(
      'cleanup: nothing selected; give --prefix, --older-than, --test-only, --orphaned-packs, --multipart, --enforce-lifecycle or --artifact-retention',
      { code: 'STOWAGE_ERR_USAGE' },
    );
  }
  return ['objects'];
}

export function emptyReport(o: CleanupOptions, modes: CleanupMode[]): CleanupReport {
  return {
    modes,
    dryRun: o.dryRun,
    prefix: o.prefix || null,
    scanned: 0,
    deleted: 0,
    bytesFreed: 0,
    errors: 0,
    objects: [],
    uploads: [],
    stragglers: 0,
    perMode: {},
    errorMessages: [],
    unsupported: [],
    artifacts: [],
  };
}

export function addError(report: CleanupReport, message: string, count = 1): void {
  report.errors += count;
  if (report.errorMessages.length < MAX_ERROR_MESSAGES) report.errorMessages.push(message);
}

/** Run `fn` over `items` with at most `limit` in flight. */
async function eachLimit<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!);
  });
  await Promise.all(lanes);
}

/**
 * Run a cleanup. `report` is filled in as it goes, so a caller that records the run (r2_cleanup_logs)
 * has the partial counts even when it throws.
 */
export async function runCleanup(deps: CleanupDeps, o: CleanupOptions, report = emptyReport(o, cleanupModes(o))): Promise<CleanupReport> {
  const modes = report.modes;
  const now = deps.now ?? Date.now();
  const scope = o.prefix ?? '';
  if (modes.includes('orphaned-packs') && !deps.versionsExist) {
    throw new StowageError('STOWAGE_ERR_INTERNAL', 'cleanup: orphaned packs need the project_versions lookup');
  }
  const rules = (deps.rules ?? []).filter((r) => r.enabled);

  if (modes.some((m) => m !== 'multipart' && m !== 'artifact-retention')) await sweepObjects(deps, o, report, modes, rules, now, scope);
  const abortRules = modes.includes('lifecycle') ? rules.filter((r) => r.abortIncompleteMultipartDays !== undefined) : [];
  if (modes.includes('multipart') || abortRules.length) await sweepUploads(deps, o, report, abortRules, now, scope);
  return report;
}

async function sweepObjects(
  deps: CleanupDeps,
  o: CleanupOptions,
  report: CleanupReport,
  modes: CleanupMode[],
  rules: LifecycleRule[],
  now: number,
  scope: string,
): Promise<void> {
  const { storage } = deps;
  const objects = new Map<string, ListedObject>();
  const sidecars = new Map<string, ListedObject>();
  for await (const obj of listObjects(storage, {
    prefix: scope,
    ...(deps.signal ? { signal: deps.signal } : {}),
    onPage: (n) => {
      if (n % 10_000 === 0) deps.onProgress?.(`listed ${n} keys under ${scope || 'the bucket'}`);
    },
  })) {
    report.scanned++;
    (isSha256SidecarKey(obj.key) ? sidecars : objects).set(obj.key, obj);
  }
  deps.onProgress?.(`listed ${report.scanned} keys under ${scope || 'the bucket'}`);
  // A sidecar whose object is gone is an object of its own.
  for (const [key, sidecar] of sidecars) {
    if (!objects.has(key.slice(0, -SHA256_SIDECAR_SUFFIX.length))) objects.set(key, sidecar);
  }

  const picked = new Map<string, string>();
  const pick = (key: string, reason: string) => {
    if (!picked.has(key)) picked.set(key, reason);
  };
  const olderThan = (obj: ListedObject, ms: number) => now - obj.lastModified.getTime() >= ms;

  if (modes.includes('objects')) {
    const minAge = (o.olderThanDays ?? 0) * DAY_MS;
    for (const obj of objects.values()) if (olderThan(obj, minAge)) pick(obj.key, 'objects');
  }
  if (modes.includes('lifecycle')) {
    for (const rule of rules.filter((r) => r.expireDays !== undefined)) {
      const covers = ruleMatcher(rule);
      for (const obj of objects.values())
        if (covers(obj.key) && isExpired(rule, obj.lastModified, now)) pick(obj.key, `lifecycle:${rule.id}`);
    }
  }
  if (modes.includes('orphaned-packs')) {
    const minAge = o.olderThanDays !== undefined ? o.olderThanDays * DAY_MS : ORPHAN_GRACE_MS;
    const packs: Array<{ key: string; userId: string; projectId: string; from: string; to: string }> = [];
    for (const obj of objects.values()) {
      const m = PACK_KEY_PATTERN.exec(obj.key);
      if (m && olderThan(obj, minAge)) packs.push({ key: obj.key, userId: m[1]!, projectId: m[2]!, from: m[3]!, to: m[4]! });
    }
    if (packs.length) {
      const wanted = new Map<string, { userId: string; projectId: string; versionId: string }>();
      for (const p of packs) {
        for (const versionId of [p.from, p.to])
          wanted.set(`${p.userId}/${p.projectId}/${versionId}`, { userId: p.userId, projectId: p.projectId, versionId });
      }
      const existing = await deps.versionsExist!([...wanted.values()]);
      for (const p of packs) {
        if (!existing.has(`${p.userId}/${p.projectId}/${p.from}`) || !existing.has(`${p.userId}/${p.projectId}/${p.to}`))
          pick(p.key, 'orphaned-packs');
      }
    }
  }

  let keys = [...picked.keys()];
  if (o.testOnly && keys.length) {
    deps.onProgress?.(`checking ${keys.length} object(s) for the test mark`);
    const marked = new Set<string>();
    await eachLimit(keys, HEAD_CONCURRENCY, async (key) => {
      deps.signal?.throwIfAborted();
      try {
        const head = await storage.client.send(new HeadObjectCommand({ Bucket: storage.bucket, Key: key }));
        if (head.Metadata?.['stowage-test'] === 'true') marked.add(key);
      } catch (err) {
        // Gone since the listing: nothing to delete.
        if (statusOf(err) !== 404) throw storeError(err, `HEAD ${key}`);
      }
    });
    keys = keys.filter((k) => marked.has(k));
  }

  // Each picked object with its sidecar, in key order.
  const victims: SelectedObject[] = [];
  for (const key of keys.sort()) {
    const reason = picked.get(key)!;
    const obj = objects.get(key)!;
    victims.push({ key, size: obj.size, lastModified: obj.lastModified.toISOString(), reason });
    const sidecar = isSha256SidecarKey(key) ? undefined : sidecars.get(sha256SidecarKey(key));
    if (sidecar) victims.push({ key: sidecar.key, size: sidecar.size, lastModified: sidecar.lastModified.toISOString(), reason });
  }
  for (const v of victims) {
    if (!v.key.startsWith(scope))
      throw new StowageError('STOWAGE_ERR_INTERNAL', `cleanup: refusing to delete "${v.key}" outside the prefix "${scope}"`);
  }
  report.objects.push(...victims);

  const tally = (v: SelectedObject) => tallyDeleted(report, v);
  if (o.dryRun) {
    victims.forEach(tally);
    return;
  }
  for (let i = 0; i < victims.length; i += DELETE_BATCH) {
    deps.signal?.throwIfAborted();
    const batch = victims.slice(i, i + DELETE_BATCH);
    let failed: Map<string, string>;
    try {
      failed = await deleteObjectBatch(
        storage,
        batch.map((v) => v.key),
      );
    } catch (err) {
      addError(report, `DeleteObjects (${batch.length} keys from ${batch[0]!.key}): ${(err as Error).message}`, batch.length);
      throw storeError(err, `deleting ${batch.length} objects`);
    }
    for (const v of batch) {
      const why = failed.get(v.key);
      if (why === undefined) tally(v);
      else addError(report, `${v.key}: ${why}`);
    }
    if (victims.length > DELETE_BATCH) deps.onProgress?.(`deleted ${Math.min(i + DELETE_BATCH, victims.length)} of ${victims.length} keys`);
  }
}

/** Count a deleted (or, in a dry run, selected) object, under the mode its reason starts with. */
export function tallyDeleted(report: CleanupReport, v: SelectedObject): void {
  report.deleted++;
  report.bytesFreed += v.size;
  const m = (report.perMode[v.reason.split(':')[0]!] ??= { deleted: 0, bytesFreed: 0 });
  m.deleted++;
  m.bytesFreed += v.size;
}

/**
 * One DeleteObjects request (at most DELETE_BATCH keys, quiet): the keys the store refused, each
 * with its code and message. A request that fails as a whole throws.
 */
export async function deleteObjectBatch(storage: Storage, keys: string[]): Promise<Map<string, string>> {
  if (keys.length > DELETE_BATCH) throw new StowageError('STOWAGE_ERR_INTERNAL', `DeleteObjects takes at most ${DELETE_BATCH} keys`);
  if (!keys.length) return new Map();
  const res = await storage.client.send(
    new DeleteObjectsCommand({ Bucket: storage.bucket, Delete: { Objects: keys.map((Key) => ({ Key })), Quiet: true } }),
  );
  return new Map((res.Errors ?? []).map((e) => [e.Key ?? '', `${e.Code}: ${e.Message}`]));
}

async function listUploads(storage: Storage, scope: string, signal?: AbortSignal): Promise<MultipartUpload[]> {
  const uploads: MultipartUpload[] = [];
  let keyMarker: string | undefined;
  let uploadIdMarker: string | undefined;
  for (;;) {
    signal?.throwIfAborted();
    const page = await storage.client.send(
      new ListMultipartUploadsCommand({
        Bucket: storage.bucket,
        ...(scope ? { Prefix: scope } : {}),
        ...(keyMarker ? { KeyMarker: keyMarker } : {}),
        ...(uploadIdMarker ? { UploadIdMarker: uploadIdMarker } : {}),
        MaxUploads: 1000,
      }),
    );
    uploads.push(...(page.Uploads ?? []));
    if (!page.IsTruncated) return uploads;
    keyMarker = page.NextKeyMarker;
    uploadIdMarker = page.NextUploadIdMarker;
    if (!keyMarker && !uploadIdMarker) return uploads;
  }
}

async function sweepUploads(
  deps: CleanupDeps,
  o: CleanupOptions,
  report: CleanupReport,
  abortRules: LifecycleRule[],
  now: number,
  scope: string,
): Promise<void> {
  const { storage } = deps;
  const explicit = report.modes.includes('multipart');
  const hours = o.olderThanHours ?? (o.olderThanDays !== undefined ? o.olderThanDays * 24 : DEFAULT_MULTIPART_HOURS);
  const matchers = abortRules.map((r) => ({ rule: r, covers: ruleMatcher(r) }));
  const reasonFor = (u: MultipartUpload): string | null => {
    if (!u.Key || !u.UploadId || !u.Key.startsWith(scope)) return null;
    const age = now - (u.Initiated?.getTime() ?? now);
    if (explicit && age >= hours * HOUR_MS) return 'multipart';
    for (const { rule, covers } of matchers) {
      if (covers(u.Key) && age >= rule.abortIncompleteMultipartDays! * DAY_MS) return `lifecycle:${rule.id}`;
    }
    return null;
  };

  let uploads: MultipartUpload[];
  try {
    uploads = await listUploads(storage, scope, deps.signal);
  } catch (err) {
    if (!explicit && isNotImplemented(err)) {
      report.unsupported.push('ListMultipartUploads');
      return;
    }
    throw notImplementedError(err, 'ListMultipartUploads', MULTIPART_UNSUPPORTED_HINT);
  }
  report.scanned += uploads.length;

  const tally = (_u: MultipartUpload, reason: string) => {
    report.deleted++;
    const m = (report.perMode[reason.split(':')[0]!] ??= { deleted: 0, bytesFreed: 0 });
    m.deleted++;
  };
  const aborted = new Set<string>();
  const abort = async (u: MultipartUpload, reason: string): Promise<void> => {
    try {
      await storage.client.send(new AbortMultipartUploadCommand({ Bucket: storage.bucket, Key: u.Key!, UploadId: u.UploadId! }));
      // A straggler aborted again is still one upload.
      if (!aborted.has(u.UploadId!)) tally(u, reason);
      aborted.add(u.UploadId!);
    } catch (err) {
      // Completed or aborted by someone else since the listing: gone either way.
      if ((err as Error).name === 'NoSuchUpload' || statusOf(err) === 404) return;
      if (isNotImplemented(err)) throw notImplementedError(err, 'AbortMultipartUpload', MULTIPART_UNSUPPORTED_HINT);
      addError(report, `abort ${u.Key} ${u.UploadId}: ${(err as Error).message}`);
    }
  };

  const chosen = uploads.flatMap((u) => {
    const reason = reasonFor(u);
    return reason ? [{ u, reason }] : [];
  });
  report.uploads.push(
    ...chosen.map(({ u, reason }) => ({ key: u.Key!, uploadId: u.UploadId!, initiated: u.Initiated?.toISOString() ?? null, reason })),
  );
  if (o.dryRun) {
    chosen.forEach(({ u, reason }) => tally(u, reason));
    return;
  }
  await eachLimit(chosen, ABORT_CONCURRENCY, ({ u, reason }) => abort(u, reason));

  // List again: an abort can race a part upload that was in flight, which leaves a straggler.
  const attempted = new Set(chosen.map(({ u }) => u.UploadId));
  const again = await listUploads(storage, scope, deps.signal).catch((err: unknown) => {
    throw notImplementedError(err, 'ListMultipartUploads', MULTIPART_UNSUPPORTED_HINT);
  });
  const stragglers = again.filter((u) => attempted.has(u.UploadId) && reasonFor(u));
  report.stragglers = stragglers.length;
  for (const u of stragglers) await abort(u, reasonFor(u)!);
}
