/**
 * Payload and result schemas for every job kind. Producers validate with these before enqueueing
 * and workers validate again before processing (a job may come from another producer version).
 */
import { isAbsolute } from 'node:path';
import { z } from 'zod';
import { safeId } from './ids.js';

const absolutePath = z
  .string()
  .min(1, 'must not be empty')
  .max(4096)
  .refine((p) => isAbsolute(p), 'must be an absolute path')
  .refine((p) => !p.includes('\u0000'), 'must not contain NUL');

export const buildArtifactPayload = z.strictObject({
  userId: safeId,
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

export const exportPayload = z.strictObject({
  module: safeId,
  userId: safeId,
  format: z.enum(['json', 'jsonl', 'parquet']),
  records: z.array(z.record(z.string(), z.unknown())).min(1, 'at least one record').max(100_000),
  /** Object id; derived from the records when absent. */
  id: safeId.optional(),
});

const sqliteSource = z.strictObject({ name: safeId, path: absolutePath });
const postgresSource = z.strictObject({ name: safeId, url: z.string().min(1) });

export const backupPayload = z
  .strictObject({
    /** A backup set from the config file. */
    set: safeId.optional(),
    /** An ad hoc set: its name and databases. */
    name: safeId.optional(),
    sqlite: z.array(sqliteSource).optional(),
    postgres: z.array(postgresSource).optional(),
    /** `backup` (default) takes a backup; `prune` applies the set's retention policy. */
    task: z.enum(['backup', 'prune']).default('backup'),
    /** prune only: decide and report, delete nothing. */
    dryRun: z.boolean().optional(),
  })
  .refine((p) => Boolean(p.set) !== Boolean(p.name), {
    message: 'give either set or name (with sqlite/postgres databases), not both',
    path: ['set'],
  })
  .refine((p) => p.task !== 'prune' || Boolean(p.set), { message: 'prune needs a configured set', path: ['set'] })
  .refine((p) => !p.name || (p.sqlite?.length ?? 0) + (p.postgres?.length ?? 0) > 0, {
    message: 'an ad hoc backup needs at least one database',
    path: ['sqlite'],
  });

export const cleanupPayload = z.strictObject({
  dryRun: z.boolean().default(true),
  olderThanDays: z.number().min(0).max(36_500).optional(),
  prefix: z.string().max(1024).optional(),
  testOnly: z.boolean().optional(),
  orphanedPacks: z.boolean().optional(),
  multipart: z.boolean().optional(),
  olderThanHours: z.number().min(0).max(876_000).optional(),
  enforceLifecycle: z.boolean().optional(),
});

export type BuildArtifactPayload = z.input<typeof buildArtifactPayload>;
export type BuildArtifactResult = z.infer<typeof buildArtifactResult>;
export type AggregationPayload = z.input<typeof aggregationPayload>;
export type ExportPayload = z.input<typeof exportPayload>;
export type BackupPayload = z.input<typeof backupPayload>;
export type CleanupPayload = z.input<typeof cleanupPayload>;
