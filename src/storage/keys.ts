/**
 * The one place for object key formats. Keys derive from the payload only, so a rerun of the same
 * job writes the same key (idempotent by construction). The ids are validated upstream (`safeId`:
 * no `/`, no `..`, no control characters), so they are safe as path segments.
 */
import { ValidationError } from '../errors.js';

/** A build's snapshot: `{userId}/{projectId}/snapshots/{versionId}.zip`. */
export function artifactKey(userId: string, projectId: string, versionId: string): string {
  return `${userId}/${projectId}/snapshots/${versionId}.zip`;
}

/** A diff pack between two versions: `{userId}/{projectId}/packs/git_{from}_to_{to}.pack.zip`. */
export function packKey(userId: string, projectId: string, fromVersionId: string, toVersionId: string): string {
  return `${userId}/${projectId}/packs/git_${fromVersionId}_to_${toVersionId}.pack.zip`;
}

/** Matches a pack key and captures userId, projectId, from and to (for the orphaned-pack cleanup). */
export const PACK_KEY_PATTERN = /^([^/]+)\/([^/]+)\/packs\/git_(.+)_to_(.+)\.pack\.zip$/;

/**
 * A failure-pattern aggregation export:
 * `{prefix}/YYYY/MM/DD/candidates_{YYYYMMDDTHHMMSSZ}_{sha12}.json`, the date and time in UTC of
 * `generatedAt`, sha12 the first 12 hex digits of the content's SHA-256.
 */
export function aggregationKey(prefix: string, generatedAt: Date, sha256: string): string {
  const iso = generatedAt.toISOString(); // 2025-12-08T02:30:15.123Z
  const [y, mo, d] = [iso.slice(0, 4), iso.slice(5, 7), iso.slice(8, 10)];
  const stamp = `${y}${mo}${d}T${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`;
  return `${prefix}/${y}/${mo}/${d}/candidates_${stamp}_${sha256.slice(0, 12)}.json`;
}

/** Matches an aggregation export key; captures prefix, the timestamp and sha12. */
export const AGGREGATION_KEY_PATTERN = /^(.+)\/(\d{4})\/(\d{2})\/(\d{2})\/candidates_(\d{8}T\d{6}Z)_([0-9a-f]{12})\.json$/;

/** Suffix of the SHA-256 sidecar object written next to every uploaded object (see docs/storage.md). */
export const SHA256_SIDECAR_SUFFIX = '.sha256';

/** `<key>.sha256`: holds `<hex>  <file name>\n`, the format `sha256sum -c` reads. */
export function sha256SidecarKey(key: string): string {
  return `${key}${SHA256_SIDECAR_SUFFIX}`;
}

export function isSha256SidecarKey(key: string): boolean {
  return key.endsWith(SHA256_SIDECAR_SUFFIX);
}

/** The URL recorded in Postgres for an object: `s3://{bucket}/{key}`. */
export function objectUrl(bucket: string, key: string): string {
  return `s3://${bucket}/${key}`;
}

/** Inverse of objectUrl; null when `url` is not an `s3://bucket/key` URL. */
export function parseObjectUrl(url: string): { bucket: string; key: string } | null {
  const match = /^s3:\/\/([^/]+)\/(.+)$/.exec(url);
  return match ? { bucket: match[1]!, key: match[2]! } : null;
}

/** Formats of record exports and their file extensions. */
export type RecordFormat = 'json' | 'jsonl' | 'parquet';

/**
 * The root of record exports. Records once went to `{module}/{userId}/…` at the top of the bucket,
 * beside build artifacts (`{userId}/…`), backups and the aggregation exports, so a module named like
 * another user (or `backups`) put one user's records in someone else's folder. Objects written there
 * stay where they are: every read goes through the manifest, whose entries carry each object's key.
 */
export const RECORDS_ROOT = 'records';

/**
 * A record export: `records/{module}/{userId}/YYYY/MM/DD/{id}.{ext}`, the date in UTC of `at` (the
 * job's creation time, so a retry of the same job writes the same key).
 */
export function recordKey(module: string, userId: string, at: Date, id: string, format: RecordFormat): string {
  const iso = at.toISOString();
  return `${RECORDS_ROOT}/${module}/${userId}/${iso.slice(0, 4)}/${iso.slice(5, 7)}/${iso.slice(8, 10)}/${id}.${format}`;
}

/** The manifest of one module and user: `manifests/{module}/{userId}/manifest.jsonl`. */
export function manifestKey(module: string, userId: string): string {
  return `manifests/${module}/${userId}/manifest.jsonl`;
}

/**
 * A compacted manifest segment: `manifests/{module}/{userId}/segments/YYYY-MM-DD-{seq}-{sha12}.jsonl`,
 * the date in UTC of its oldest entry, `seq` its 1-based sequence number (6 digits), sha12 the
 * first 12 hex digits of its content's SHA-256. Content-addressed: concurrent compactions of one
 * head state write the same key with the same bytes, and no write ever replaces a segment with
 * other bytes.
 */
export function manifestSegmentKey(module: string, userId: string, oldest: Date, seq: number, sha256: string): string {
  return `manifests/${module}/${userId}/segments/${oldest.toISOString().slice(0, 10)}-${String(seq).padStart(6, '0')}-${sha256.slice(0, 12)}.jsonl`;
}

/** A key-value JSON blob: `json_blobs/{key}.json`. `key` is a safeId. */
export function jsonBlobKey(key: string): string {
  return `json_blobs/${key}.json`;
}

/** Where the capability probe (capabilities.ts) writes its throw-away objects. */
export const CAPABILITY_PROBE_PREFIX = '_stowage/capabilities/';

/**
 * The top-level prefixes of Stowage's own objects: the record and manifest roots, JSON blobs,
 * backups, probes, and the default prefix of aggregation exports (`failures.uploadPrefix`). A record
 * module may not take one of these names: it would read as that folder in any listing, lifecycle
 * rule or usage report, and records written by earlier versions sit at `{module}/…`.
 */
export const RESERVED_TOP_LEVEL_PREFIXES: ReadonlySet<string> = new Set([
  RECORDS_ROOT,
  'manifests',
  'json_blobs',
  'backups',
  '_stowage',
  'failure_patterns',
]);

/** Why `name` cannot be a record module (it is one of Stowage's top-level prefixes), or undefined. */
export function reservedModuleReason(name: string): string | undefined {
  return RESERVED_TOP_LEVEL_PREFIXES.has(name)
    ? `"${name}" is reserved: Stowage keeps its own ${name}/ objects at the top of the bucket (reserved: ${[...RESERVED_TOP_LEVEL_PREFIXES].join(', ')})`
    : undefined;
}

/**
 * A backup archive: `backups/{set}/{set}-backup-YYYY-MM-DD-HHMMSS.tar.gz`, the date and time in UTC
 * of the run. `set` is a safeId.
 */
export function backupKey(set: string, takenAt: Date): string {
  const iso = takenAt.toISOString(); // 2026-01-08T14:30:22.123Z
  const stamp = `${iso.slice(0, 10)}-${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}`;
  return `backups/${set}/${set}-backup-${stamp}.tar.gz`;
}

/** Matches a backup key; captures set and the `YYYY-MM-DD-HHMMSS` stamp. */
export const BACKUP_KEY_PATTERN = /^backups\/([^/]+)\/\1-backup-(\d{4}-\d{2}-\d{2}-\d{6})\.tar\.gz$/;

/** A backup's name: its archive's basename without `.tar.gz` (`{set}-backup-YYYY-MM-DD-HHMMSS`). */
export function backupName(key: string): string {
  return key.slice(key.lastIndexOf('/') + 1).replace(/\.tar\.gz$/, '');
}

/**
 * The key of a backup named `name` (also accepts the archive basename or the whole key). Throws
 * ValidationError when it is not a backup name.
 */
export function backupKeyOf(name: string): string {
  const bare = backupName(name.trim());
  const m = /^(.+)-backup-(\d{4}-\d{2}-\d{2}-\d{6})$/.exec(bare);
  const key = m ? `backups/${m[1]}/${bare}.tar.gz` : '';
  if (!m || !BACKUP_KEY_PATTERN.test(key)) {
    throw new ValidationError('backup name', [
      `${JSON.stringify(name)} is not a backup name; expected {set}-backup-YYYY-MM-DD-HHMMSS (see \`stowage backup list\`)`,
    ]);
  }
  return key;
}
