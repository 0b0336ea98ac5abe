/**
 * Where a resumable upload keeps its state between attempts (see upload.ts and
 * docs/storage.md "Resuming uploads"): the multipart upload's id and part size, and one record per
 * part the store acknowledged (number, ETag, size, SHA-256).
 *
 * In Redis, one small hash per job and upload (`redisKeys.uploadState`, under the Stowage prefix
 * like the job's other key, `jobError`; every command here touches that one key, so on Redis
 * Cluster it may live in any slot): field `upload` holds the upload,
 * `part:<n>` each acknowledged part, written once the store answered for it (one HSET of ~150
 * bytes per 8–64 MiB part). Not in the job's data: `job.updateData` rewrites the whole payload on
 * every call. The hash expires RESUME_STATE_TTL_SECONDS after its last write (the bucket's
 * AbortIncompleteMultipartUpload rule ends the upload itself, by default after a day) and is
 * deleted when the upload completes or is aborted.
 */
import type { Redis } from 'ioredis';

/** One part the store acknowledged. */
export interface PartRecord {
  partNumber: number;
  /** As the store returned it (quoted). */
  etag: string;
  size: number;
  /** SHA-256 of the part's bytes, hex. */
  sha256: string;
}

/** The interrupted multipart upload an attempt may resume. */
export interface UploadStateHeader {
  /** Format of this record; another one is ignored (the upload restarts). */
  v: 1;
  bucket: string;
  key: string;
  uploadId: string;
  /** Every part but the last is this size; a different configured size restarts the upload. */
  partSize: number;
  /** The upload was created with per-part SHA-256 checksums (ChecksumAlgorithm SHA256). */
  partChecksums: boolean;
  startedAt: string;
}

export interface UploadState extends UploadStateHeader {
  /** By part number. */
  parts: PartRecord[];
}

export interface ResumeStore {
  /** Where the state is kept (the Redis key), for log lines. */
  readonly name: string;
  load(): Promise<UploadState | null>;
  /** A new multipart upload: replaces whatever was kept. */
  begin(header: UploadStateHeader): Promise<void>;
  addPart(part: PartRecord): Promise<void>;
  clear(): Promise<void>;
}

/** A week: longer than any retry backoff; the store's own lifecycle rule usually ends the upload first. */
export const RESUME_STATE_TTL_SECONDS = 7 * 24 * 3600;

const HEADER_FIELD = 'upload';
const PART_FIELD = 'part:';

function parseState(fields: Record<string, string>): UploadState | null {
  const raw = fields[HEADER_FIELD];
  if (!raw) return null;
  let header: UploadStateHeader;
  try {
    header = JSON.parse(raw) as UploadStateHeader;
  } catch {
    return null;
  }
  if (header.v !== 1 || typeof header.uploadId !== 'string' || !Number.isInteger(header.partSize)) return null;
  const parts: PartRecord[] = [];
  for (const [field, value] of Object.entries(fields)) {
    if (!field.startsWith(PART_FIELD)) continue;
    const partNumber = Number(field.slice(PART_FIELD.length));
    try {
      const p = JSON.parse(value) as { etag?: unknown; size?: unknown; sha256?: unknown };
      if (
        Number.isInteger(partNumber) &&
        partNumber >= 1 &&
        typeof p.etag === 'string' &&
        typeof p.sha256 === 'string' &&
        /^[0-9a-f]{64}$/.test(p.sha256) &&
        typeof p.size === 'number'
      ) {
        parts.push({ partNumber, etag: p.etag, size: p.size, sha256: p.sha256 });
      }
    } catch {
      // a part record that does not parse is simply not skipped: the part is sent again
    }
  }
  parts.sort((a, b) => a.partNumber - b.partNumber);
  return { ...header, parts };
}

/** MULTI answers each command's error in its results instead of rejecting. */
async function execOrThrow(multi: ReturnType<Redis['multi']>): Promise<void> {
  const results = await multi.exec();
  const failed = results?.find(([err]) => err);
  if (failed) throw failed[0];
}

/** A ResumeStore in one Redis hash at `key`. */
export function redisResumeStore(redis: Redis, key: string, ttlSeconds = RESUME_STATE_TTL_SECONDS): ResumeStore {
  return {
    name: key,
    async load() {
      return parseState(await redis.hgetall(key));
    },
    async begin(header) {
      await execOrThrow(redis.multi().del(key).hset(key, HEADER_FIELD, JSON.stringify(header)).expire(key, ttlSeconds));
    },
    async addPart(part) {
      const value = JSON.stringify({ etag: part.etag, size: part.size, sha256: part.sha256 });
      await execOrThrow(redis.multi().hset(key, `${PART_FIELD}${part.partNumber}`, value).expire(key, ttlSeconds));
    },
    async clear() {
      await redis.del(key);
    },
  };
}
