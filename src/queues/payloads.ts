/**
 * Payload and result schemas for every job kind. Producers validate with these before enqueueing
 * and workers validate again before processing (a job may come from another producer version).
 */
import { z } from 'zod';
import { absolutePath, safeId } from '../ids.js';
import type { BackupDatabaseEntry } from '../db/backups.js';
import { RESERVED_TOP_LEVEL_PREFIXES, reservedModuleReason } from '../storage/keys.js';

export const buildArtifactPayload = z.strictObject({
  /** The artifact's top-level folder (`{userId}/{projectId}/…`): none of Stowage's own prefixes. */
  userId: safeId.refine((u) => !RESERVED_TOP_LEVEL_PREFIXES.has(u), {
    error: (issue) => reservedModuleReason(String(issue.input)) ?? 'is reserved',
  }),
  projectId: safeId,
  versionId: safeId,
  /** Folder (or single file) to archive. */
  buildDir: absolutePath,
  buildId: safeId.optional(),
  /** With packPath: also store a diff pack from this version to versionId. */
  fromVersionId: safeId.optional(),
  packPath: absolutePath.optional(),
  /** Mark the object as test data (cleanup --test-only removes it). */
  test: z.boolean().optional(),
});

export const buildArtifactResult = z.object({
  status: z.enum(['uploaded', 'skipped_too_large']),
  key: z.string(),
  size: z.number(),
  sha256: z.string().nullable(),
  etag: z.string().nullable().optional(),
  packKey: z.string().nullable().optional(),
});

export const aggregationPayload = z.strictObject({
  /** Window length in days, ending now (or at windowEnd). */
  days: z.number().int().min(1).max(366).default(7),
  minOccurrences: z.number().int().min(1).max(1_000_000).default(3),
  windowEnd: z.iso.datetime().optional(),
  dryRun: z.boolean().optional(),
  /**
   * `aggregate` (default): build and upload the export. `retry-fallbacks`: re-upload exports left in
   * the local fallback directory (the 15-minute schedule), at most `max`.
   */
  task: z.enum(['aggregate', 'retry-fallbacks']).default('aggregate'),
  max: z.number().int().min(1).max(10_000).optional(),
});

/**
 * What an aggregation job returns: for `aggregate`, the export's summary (src/failures/aggregation.ts
 * builds it); for `retry-fallbacks`, how many fallback exports it handled and how.
 */
export type AggregationResult =
  | {
      task: 'aggregate';
      /** `skipped`: a dry run, nothing stored. */
      status: 'uploaded' | 'fallback_local' | 'skipped';
      key: string;
      sha256: string;
      size: number;
      patterns: number;
      /** The audit row; null when nothing was stored. */
      exportId: string | null;
      /** Where the export waits for the retry task when the store refused it. */
      localPath: string | null;
      attempts: number;
      window: { days: number; start: string; end: string; min_occurrences: number };
    }
  | { task: 'retry-fallbacks'; considered: number; uploaded: number; retrying: number; failed: number };

/** A plain object (what JSON.parse makes of `{…}`), or one with a null prototype. */
function isRecord(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * One record of a records export: any plain object, taken as it is. Not z.record(): that copies
 * every key of every record, on the producer and again in the worker (5.5 ms for 10,000 small
 * records against 1.0 ms; the keys of JSON are strings anyway).
 */
const exportRecord = z
  .custom<Record<string, unknown>>(isRecord, 'expected an object of fields')
  // What /openapi.json says of it (a custom check has no JSON Schema of its own).
  .meta({ type: 'object', additionalProperties: {} });

/** Store records as one object (the default op; payloads without `op` are this). */
export const exportRecordsPayload = z.strictObject({
  op: z.literal('records').optional(),
  /** Not one of Stowage's own top-level prefixes (`backups`, `manifests`, …; storage/keys.ts). */
  module: safeId.refine((m) => !RESERVED_TOP_LEVEL_PREFIXES.has(m), {
    error: (issue) => reservedModuleReason(String(issue.input)) ?? 'is reserved',
  }),
  userId: safeId,
  format: z.enum(['json', 'jsonl', 'parquet']),
  records: z.array(exportRecord).min(1, 'at least one record').max(100_000),
  /** Object id; derived from the records when absent. */
  id: safeId.optional(),
});

/** Store one JSON value under `json_blobs/{key}.json` (key-value; a later write replaces it). */
export const exportBlobPayload = z.strictObject({
  op: z.literal('blob'),
  key: safeId,
  /** Any JSON value; at most 16 MiB serialized (it travels through Redis in the job). */
  value: z.json().refine((v) => JSON.stringify(v).length <= 16 * 1024 * 1024, 'at most 16 MiB of JSON'),
});

export const exportPayload = z.discriminatedUnion('op', [exportRecordsPayload, exportBlobPayload]);

/** What an export job returns for a records export. */
export type ExportResult = {
  op: 'records';
  id: string;
  key: string;
  format: 'json' | 'jsonl' | 'parquet';
  record_count: number;
  size: number;
  sha256: string;
  /** ISO 8601: the job's creation time (the date in the key). */
  created_at: string;
  /** `s3://{bucket}/{key}`. */
  url?: string;
};

/** What an export job returns for a JSON blob. */
export type JsonBlobResult = {
  op: 'blob';
  /** The blob's key as given. */
  blobKey: string;
  /** The object key, `json_blobs/{key}.json`. */
  key: string;
  size: number;
  sha256: string;
  url?: string;
};

/** Query parameters libpq reads a secret from. */
const SECRET_PARAMS = new Set(['password', 'sslpassword']);

/**
 * A `postgres://` (or `postgresql://`) URL that carries no password, neither as `user:password@`
 * nor as a `?password=` / `?sslpassword=` parameter. `passwordMessage` says what to do instead
 * where one is refused (job payloads, backup metadata). The URL is never echoed in a message.
 */
export function postgresUrlWithoutPassword(passwordMessage: string) {
  return z
    .string()
    .min(1, 'must not be empty')
    .max(4096, 'at most 4096 characters')
    .superRefine((s, ctx) => {
      let u: URL;
      try {
        u = new URL(s);
      } catch {
        ctx.addIssue({ code: 'custom', message: 'is not a URL; expected postgres://user@host:port/database' });
        return;
      }
      if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:')
        ctx.addIssue({ code: 'custom', message: `must start with postgres:// or postgresql:// (got ${u.protocol}//)` });
      else if (u.password || [...u.searchParams.keys()].some((k) => SECRET_PARAMS.has(k.toLowerCase())))
        ctx.addIssue({ code: 'custom', message: passwordMessage });
    });
}

/**
 * Why an ad hoc URL may not hold its password: a payload is kept in Redis, shown on the board and,
 * once parked, in dead letters that never expire. libpq on the worker finds it instead.
 */
export const AD_HOC_PASSWORD_MESSAGE =
  'carries a password, and a job payload is stored in Redis and shown on the board and in dead letters: remove it from the URL ' +
  'and give it to the workers in PGPASSWORD or a ~/.pgpass (PGPASSFILE) entry, or back the database up as a configured set (backupSets)';

const sqliteSource = z.strictObject({ name: safeId, path: absolutePath });
const postgresSource = z.strictObject({ name: safeId, url: postgresUrlWithoutPassword(AD_HOC_PASSWORD_MESSAGE) });

export const backupPayload = z
  .strictObject({
    /** A backup set from the config file. */
    set: safeId.optional(),
    /** An ad hoc set: its name and databases (PostgreSQL URLs without a password: see AD_HOC_PASSWORD_MESSAGE). */
    name: safeId.optional(),
    sqlite: z.array(sqliteSource).optional(),
    postgres: z.array(postgresSource).optional(),
    /** `backup` (default) takes a backup; `prune` applies the set's retention policy; `drill` restores the newest backup into a scratch folder and verifies it. */
    task: z.enum(['backup', 'prune', 'drill']).default('backup'),
    /**
     * When an ad hoc run was asked for (`backup now`, POST /api/backups/now). It is part of the job
     * id, so two runs of one set never dedupe; scheduled runs leave it out and get one job per tick.
     */
    requestedAt: z.iso.datetime().optional(),
    /** prune only: decide and report, delete nothing. */
    dryRun: z.boolean().optional(),
  })
  .refine((p) => Boolean(p.set) !== Boolean(p.name), {
    message: 'give either set or name (with sqlite/postgres databases), not both',
    path: ['set'],
  })
  .refine((p) => p.task === 'backup' || Boolean(p.set), { message: 'prune and drill need a configured set', path: ['set'] })
  .refine((p) => !p.name || (p.sqlite?.length ?? 0) + (p.postgres?.length ?? 0) > 0, {
    message: 'an ad hoc backup needs at least one database',
    path: ['sqlite'],
  });

/** One database in a backup: its entry in the archive's metadata and in the `backups` row. */
export type BackedUpDatabase = BackupDatabaseEntry;

/** What a backup job returns, by task: the stored archive, the retention decisions, or the drill's checks. */
export type BackupResult =
  | { status: 'completed'; set: string; key: string; size: number; sha256: string; databases: BackedUpDatabase[] }
  | {
      status: 'pruned';
      set: string;
      dryRun: boolean;
      /** Keys deleted (none in a dry run). */
      deleted: string[];
      decisions: { key: string; action: 'keep' | 'delete' | 'ignore'; reasons: string[] }[];
    }
  | {
      /** A restore drill's checks (src/backups/drill.ts); a failed drill fails the job instead. */
      status: 'drilled';
      ok: boolean;
      set: string;
      key: string | null;
      error?: string;
      ms: number;
      databases: { name: string; kind: 'sqlite' | 'postgres'; ok: boolean; detail: string }[];
    };

export const cleanupPayload = z.strictObject({
  dryRun: z.boolean().default(true),
  olderThanDays: z.number().min(0).max(36_500).optional(),
  prefix: z.string().max(1024).optional(),
  testOnly: z.boolean().optional(),
  orphanedPacks: z.boolean().optional(),
  multipart: z.boolean().optional(),
  olderThanHours: z.number().min(0).max(876_000).optional(),
  enforceLifecycle: z.boolean().optional(),
  /** Artifact retention per project (config.artifact.retention): newest N, then the tiers. */
  artifactRetention: z.boolean().optional(),
});

/** What a cleanup job returns: the run's counts (src/storage/cleanup.ts `CleanupReport`) and its log row. */
export type CleanupResult = {
  /** The modes that ran, joined with `+` (e.g. `objects`, `orphaned-packs+lifecycle`). */
  mode: string;
  scanned: number;
  deleted: number;
  bytesFreed: number;
  dryRun: boolean;
  /** The r2_cleanup_logs row. */
  logId: number;
  errors: number;
  stragglers: number;
  perMode: Record<string, { deleted: number; bytesFreed: number }>;
  /** Operations the store does not implement; that part was skipped. */
  unsupported: string[];
  /** The first 100 keys deleted (or that would be). */
  sample: string[];
  /** With artifact retention: how many versions' artifacts were kept and deleted (or would be). */
  artifacts?: { kept: number; deleted: number };
};

/**
 * The file system paths a payload has a worker read, by field (`buildDir`, `sqlite.0.path`): what
 * must lie inside the source roots (storage/source-roots.ts). A configured backup set's paths are
 * not here: the operator wrote them in the configuration, and the worker takes them as given.
 */
export function payloadSourcePaths(kind: string, data: unknown): { field: string; path: string }[] {
  if (kind === 'build-artifact') {
    const p = data as z.output<typeof buildArtifactPayload>;
    return [{ field: 'buildDir', path: p.buildDir }, ...(p.packPath ? [{ field: 'packPath', path: p.packPath }] : [])];
  }
  if (kind === 'backup') {
    const p = data as z.output<typeof backupPayload>;
    return (p.sqlite ?? []).map((s, i) => ({ field: `sqlite.${i}.path`, path: s.path }));
  }
  return [];
}

export type BuildArtifactPayload = z.input<typeof buildArtifactPayload>;
export type BuildArtifactResult = z.infer<typeof buildArtifactResult>;
export type AggregationPayload = z.input<typeof aggregationPayload>;
export type ExportPayload = z.input<typeof exportPayload>;
export type ExportRecordsPayload = z.input<typeof exportRecordsPayload>;
export type BackupPayload = z.input<typeof backupPayload>;
export type CleanupPayload = z.input<typeof cleanupPayload>;
