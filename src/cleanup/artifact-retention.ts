/**
 * Artifact retention per project: what seed 001 meant its bucket rules to do, which no store's
 * age-based rules can express without deleting a project's live version once it is a month old.
 *
 * - The newest `keepLast` versions of each project are always kept (default 3), whatever their age.
 * - Every version younger than `keepWithinDays` is kept (default 30; 0 keeps every version for ever).
 * - Tiers keep the *first* version of each UTC day / month / year for that many days after it was
 *   made (0 = for ever; `false` = no such tier). Defaults: no daily tier, monthly 365 days, yearly
 *   for ever: seed 001's "every snapshot 30 days, the first of each month a year, the first of
 *   each year for ever". "First" counts among the versions that still have an artifact, so a tier's
 *   pick does not move as the policy prunes the versions after it.
 * - Ages are measured from now (the version row's created_at), like a store's lifecycle rule.
 *
 * A deleted artifact's row says so (artifact_url NULL, artifact_deleted_at and the reason), and
 * export and download then answer 404 with `canRebuild` and a `rebuildUrl`. The row is marked
 * first, guarded by its updated_at so a rebuild in between wins, then the object and its sidecar
 * are deleted; a row whose object could not be deleted is restored.
 */
import type { ArtifactRetention } from '../config.js';
import type { Db } from '../db/pool.js';
import { markArtifactsDeleted, projectsWithArtifacts, restoreArtifacts, type StoredArtifactRow } from '../db/project-versions.js';
import { addError, DELETE_BATCH, deleteObjectBatch, tallyDeleted, type CleanupReport, type SelectedObject } from '../storage/cleanup.js';
import type { Storage } from '../storage/client.js';
import { parseObjectUrl, sha256SidecarKey } from '../storage/keys.js';
import { storeError } from '../storage/store-errors.js';

const DAY_MS = 86_400_000;

export interface RetentionVersion {
  versionId: string;
  createdAt: Date;
}

export interface VersionVerdict<T extends RetentionVersion> {
  version: T;
  action: 'keep' | 'delete';
  reasons: string[];
}

const pad = (n: number) => String(n).padStart(2, '0');
const TIERS = [
  { name: 'daily', setting: 'keepDailyDays', of: (d: Date) => `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}` },
  { name: 'monthly', setting: 'keepMonthlyDays', of: (d: Date) => `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}` },
  { name: 'yearly', setting: 'keepYearlyDays', of: (d: Date) => String(d.getUTCFullYear()) },
] as const;

/**
 * Decide for each version of one project whether its artifact is kept. Pure; the result is newest
 * first (ties broken by version id) and covers every input.
 */
export function applyArtifactRetention<T extends RetentionVersion>(
  versions: readonly T[],
  policy: Omit<ArtifactRetention, 'enabled'>,
  now: number,
): VersionVerdict<T>[] {
  const newestFirst = [...versions].sort(
    (a, b) => b.createdAt.getTime() - a.createdAt.getTime() || (a.versionId < b.versionId ? 1 : a.versionId > b.versionId ? -1 : 0),
  );
  // The first (oldest) version of each tier's bucket.
  const firsts = TIERS.map((tier) => {
    const first = new Map<string, T>();
    for (let i = newestFirst.length - 1; i >= 0; i--) {
      const v = newestFirst[i]!;
      const bucket = tier.of(v.createdAt);
      if (!first.has(bucket)) first.set(bucket, v);
    }
    return { tier, days: policy[tier.setting], isFirst: new Set(first.values()) };
  });

  return newestFirst.map((v, index) => {
    const ageMs = now - v.createdAt.getTime();
    const ageDays = Math.max(0, Math.floor(ageMs / DAY_MS));
    const reasons: string[] = [];
    if (index < policy.keepLast) reasons.push(`newest ${index + 1}/${policy.keepLast}`);
    if (policy.keepWithinDays === 0) reasons.push('every version kept for ever (keepWithinDays 0)');
    else if (ageMs < policy.keepWithinDays * DAY_MS) reasons.push(`within ${policy.keepWithinDays}d (${ageDays}d old)`);
    for (const { tier, days, isFirst } of firsts) {
      if (days === false || !isFirst.has(v)) continue;
      if (days === 0) reasons.push(`first of ${tier.of(v.createdAt)} (${tier.name}, for ever)`);
      else if (ageMs < days * DAY_MS) reasons.push(`first of ${tier.of(v.createdAt)} (${tier.name}, ${days}d)`);
    }
    return reasons.length
      ? { version: v, action: 'keep' as const, reasons }
      : { version: v, action: 'delete' as const, reasons: [`${ageDays}d old: no rule keeps it`] };
  });
}

export interface ArtifactRetentionRun {
  db: Db;
  storage: Storage;
  policy: ArtifactRetention;
  dryRun: boolean;
  /** Only artifacts whose key starts with this (e.g. `user/project/`). */
  prefix?: string | undefined;
  report: CleanupReport;
  now?: number;
  signal?: AbortSignal;
  onProgress?: (message: string) => void;
}

/** A version to delete; `reason` goes on its row, and, after the mode's name, in the report. */
type Doomed = StoredArtifactRow & { key: string; reason: string };

/** Apply the policy to every project; fills `report` (artifacts, objects, counts) as it goes. */
export async function runArtifactRetention(r: ArtifactRetentionRun): Promise<void> {
  const now = r.now ?? Date.now();
  const scope = r.prefix ?? '';
  let doomed: Doomed[] = [];
  let projects = 0;
  for await (const rows of projectsWithArtifacts(r.db.pool)) {
    r.signal?.throwIfAborted();
    // Versions stored elsewhere (another bucket, an unparsable url) or outside the scope are left alone.
    const here = rows.flatMap((row) => {
      const where = parseObjectUrl(row.artifactUrl);
      return where && where.bucket === r.storage.bucket && where.key.startsWith(scope) ? [{ ...row, key: where.key }] : [];
    });
    if (!here.length) continue;
    projects++;
    for (const verdict of applyArtifactRetention(here, r.policy, now)) {
      const v = verdict.version;
      r.report.artifacts.push({
        userId: v.userId,
        projectId: v.projectId,
        versionId: v.versionId,
        createdAt: v.createdAt.toISOString(),
        key: v.key,
        action: verdict.action,
        reasons: verdict.reasons,
      });
      if (verdict.action === 'delete') doomed.push({ ...v, reason: verdict.reasons.join('; ') });
    }
    // Half a batch: an object and its sidecar per version.
    if (doomed.length >= DELETE_BATCH / 2) {
      await deleteArtifacts(r, doomed);
      doomed = [];
    }
  }
  await deleteArtifacts(r, doomed);
  r.onProgress?.(`artifact retention: ${projects} project(s), ${r.report.artifacts.length} version(s) with artifacts`);
}

async function deleteArtifacts(r: ArtifactRetentionRun, doomed: Doomed[]): Promise<void> {
  if (!doomed.length) return;
  const victims = (v: Doomed): SelectedObject[] =>
    [v.key, sha256SidecarKey(v.key)].map((key) => ({
      key,
      // The sidecar's size is not recorded; it is a few dozen bytes.
      size: key === v.key ? (v.artifactSize ?? 0) : 0,
      lastModified: v.createdAt.toISOString(),
      reason: `artifact-retention: ${v.reason}`,
    }));
  if (r.dryRun) {
    for (const v of doomed) {
      for (const o of victims(v)) {
        r.report.objects.push(o);
        tallyDeleted(r.report, o);
      }
    }
    return;
  }
  r.signal?.throwIfAborted();
  const id = (v: Pick<StoredArtifactRow, 'userId' | 'projectId' | 'versionId'>) => `${v.userId}/${v.projectId}/${v.versionId}`;
  const marked = await markArtifactsDeleted(r.db.pool, doomed);
  const gone = doomed.filter((v) => marked.has(id(v)));
  // A row that changed since it was read (a rebuild) is no longer this run's to delete.
  for (const v of doomed) {
    if (!marked.has(id(v))) {
      const verdict = r.report.artifacts.find((a) => a.key === v.key && a.action === 'delete');
      if (verdict) {
        verdict.action = 'keep';
        verdict.reasons = ['changed since it was read (rebuilt?): left for the next run'];
      }
    }
  }
  const objects = gone.flatMap(victims);
  let failed: Map<string, string>;
  try {
    failed = await deleteObjectBatch(
      r.storage,
      objects.map((o) => o.key),
    );
  } catch (err) {
    await restoreArtifacts(r.db.pool, gone);
    addError(
      r.report,
      `DeleteObjects (${objects.length} artifact keys from ${objects[0]!.key}): ${(err as Error).message}`,
      objects.length,
    );
    throw storeError(err, `deleting ${objects.length} artifact objects`);
  }
  // An artifact whose object is still there keeps its row (its sidecar alone failing does not matter).
  const kept = gone.filter((v) => failed.has(v.key));
  await restoreArtifacts(r.db.pool, kept);
  for (const o of objects) {
    const why = failed.get(o.key);
    if (why !== undefined) addError(r.report, `${o.key}: ${why}`);
    else {
      r.report.objects.push(o);
      tallyDeleted(r.report, o);
    }
  }
}
