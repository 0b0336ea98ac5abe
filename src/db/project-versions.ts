/** SQL for project_versions: which artifact each project version has. */
import type { Db } from './pool.js';
import type { Queryable } from './upload-receipts.js';

export interface ProjectVersion {
  userId: string;
  projectId: string;
  versionId: string;
  artifactUrl: string | null;
  artifactSize: number | null;
  artifactChecksum: string | null;
  createdAt: Date;
  updatedAt: Date;
  /** Set when artifact retention deleted the artifact (artifactUrl is then null). */
  artifactDeletedAt: Date | null;
  artifactDeletedReason: string | null;
}

export interface ArtifactColumns {
  userId: string;
  projectId: string;
  versionId: string;
  artifactUrl: string;
  artifactSize: number;
  artifactChecksum: string;
}

const COLUMNS =
  'user_id, project_id, version_id, artifact_url, artifact_size, artifact_checksum, created_at, updated_at, artifact_deleted_at, artifact_deleted_reason';

function toVersion(r: Record<string, unknown>): ProjectVersion {
  return {
    userId: r.user_id as string,
    projectId: r.project_id as string,
    versionId: r.version_id as string,
    artifactUrl: (r.artifact_url as string | null) ?? null,
    // bigint arrives as a string; artifacts stay far below 2^53.
    artifactSize: r.artifact_size === null ? null : Number(r.artifact_size),
    artifactChecksum: (r.artifact_checksum as string | null) ?? null,
    createdAt: r.created_at as Date,
    updatedAt: r.updated_at as Date,
    artifactDeletedAt: (r.artifact_deleted_at as Date | null) ?? null,
    artifactDeletedReason: (r.artifact_deleted_reason as string | null) ?? null,
  };
}

/**
 * Record a version's artifact in one idempotent statement: creates the row, or updates only the
 * artifact columns of an existing one (created_at and any application columns stay). A rebuild
 * of a version whose artifact retention deleted clears the deletion mark.
 */
export async function upsertProjectVersionArtifact(db: Queryable, v: ArtifactColumns): Promise<ProjectVersion> {
  const { rows } = await db.query(
    `INSERT INTO project_versions (user_id, project_id, version_id, artifact_url, artifact_size, artifact_checksum)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (user_id, project_id, version_id) DO UPDATE
       SET artifact_url = EXCLUDED.artifact_url, artifact_size = EXCLUDED.artifact_size,
           artifact_checksum = EXCLUDED.artifact_checksum, updated_at = now(),
           artifact_deleted_at = NULL, artifact_deleted_reason = NULL
     RETURNING ${COLUMNS}`,
    [v.userId, v.projectId, v.versionId, v.artifactUrl, v.artifactSize, v.artifactChecksum],
  );
  return toVersion(rows[0]);
}

export async function getProjectVersion(db: Db, userId: string, projectId: string, versionId: string): Promise<ProjectVersion | null> {
  const { rows } = await db.pool.query(
    `SELECT ${COLUMNS} FROM project_versions WHERE user_id = $1 AND project_id = $2 AND version_id = $3`,
    [userId, projectId, versionId],
  );
  return rows[0] ? toVersion(rows[0]) : null;
}

/** The newest version of a project that has an artifact (uses project_versions_latest_artifact_idx). */
export async function getLatestProjectVersionWithArtifact(db: Db, userId: string, projectId: string): Promise<ProjectVersion | null> {
  const { rows } = await db.pool.query(
    `SELECT ${COLUMNS} FROM project_versions
      WHERE user_id = $1 AND project_id = $2 AND artifact_url IS NOT NULL
      ORDER BY created_at DESC LIMIT 1`,
    [userId, projectId],
  );
  return rows[0] ? toVersion(rows[0]) : null;
}

/**
 * A user's version by id alone (version ids are unique per project, not per user): the newest
 * match, and how many projects have a version with that id, so a caller can ask to disambiguate.
 */
export async function findUserVersion(
  db: Db,
  userId: string,
  versionId: string,
  projectId?: string,
): Promise<{ version: ProjectVersion | null; matches: number }> {
  const { rows } = await db.pool.query(
    `SELECT ${COLUMNS}, count(*) OVER () AS matches FROM project_versions
      WHERE user_id = $1 AND version_id = $2 AND ($3::text IS NULL OR project_id = $3)
      ORDER BY created_at DESC LIMIT 1`,
    [userId, versionId, projectId ?? null],
  );
  return rows[0] ? { version: toVersion(rows[0]), matches: Number(rows[0].matches) } : { version: null, matches: 0 };
}

/** The newest version of a project, with or without an artifact (for the export's rebuild link). */
export async function getLatestProjectVersion(db: Db, userId: string, projectId: string): Promise<ProjectVersion | null> {
  const { rows } = await db.pool.query(
    `SELECT ${COLUMNS} FROM project_versions WHERE user_id = $1 AND project_id = $2 ORDER BY created_at DESC, version_id DESC LIMIT 1`,
    [userId, projectId],
  );
  return rows[0] ? toVersion(rows[0]) : null;
}

/** A version that has an artifact, as artifact retention sees it. */
export interface StoredArtifactRow {
  userId: string;
  projectId: string;
  versionId: string;
  artifactUrl: string;
  artifactChecksum: string;
  artifactSize: number | null;
  createdAt: Date;
  /** updated_at exactly, as text: the row's version for the guarded update. */
  stamp: string;
}

// updated_at also as text: a JS Date drops its microseconds, and the guard in markArtifactsDeleted compares exactly.
const ARTIFACT_COLUMNS =
  'user_id, project_id, version_id, artifact_url, artifact_checksum, artifact_size, created_at, updated_at::text AS stamp';

function toArtifactRow(r: Record<string, unknown>): StoredArtifactRow {
  return {
    userId: r.user_id as string,
    projectId: r.project_id as string,
    versionId: r.version_id as string,
    artifactUrl: r.artifact_url as string,
    artifactChecksum: r.artifact_checksum as string,
    artifactSize: r.artifact_size === null ? null : Number(r.artifact_size),
    createdAt: r.created_at as Date,
    stamp: r.stamp as string,
  };
}

/**
 * Every version with an artifact, a project at a time: ordered by user and project, newest first
 * within a project, read in pages by keyset so a large table is never held at once. Each yield is
 * one whole project.
 */
export async function* projectsWithArtifacts(db: Queryable, pageSize = 5000): AsyncGenerator<StoredArtifactRow[]> {
  let after: [string, string] | null = null;
  for (;;) {
    // Whole projects per page: the page's last project may be cut, so it is read again next time.
    const { rows } = await db.query(
      `SELECT ${ARTIFACT_COLUMNS} FROM project_versions
        WHERE artifact_url IS NOT NULL AND ($1::text IS NULL OR (user_id, project_id) > ($1, $2))
        ORDER BY user_id, project_id, created_at DESC, version_id DESC
        LIMIT $3`,
      [after?.[0] ?? null, after?.[1] ?? null, pageSize + 1],
    );
    const page = rows.map(toArtifactRow);
    const full = page.length > pageSize;
    const groups: StoredArtifactRow[][] = [];
    for (const row of page) {
      const last = groups.at(-1);
      if (last && last[0]!.userId === row.userId && last[0]!.projectId === row.projectId) last.push(row);
      else groups.push([row]);
    }
    if (!full) {
      yield* groups;
      return;
    }
    if (groups.length === 1) {
      // One project larger than a page: read it whole.
      const { userId, projectId } = groups[0]![0]!;
      const all = await db.query(
        `SELECT ${ARTIFACT_COLUMNS} FROM project_versions WHERE artifact_url IS NOT NULL AND user_id = $1 AND project_id = $2
          ORDER BY created_at DESC, version_id DESC`,
        [userId, projectId],
      );
      yield all.rows.map(toArtifactRow);
      after = [userId, projectId];
      continue;
    }
    groups.pop();
    yield* groups;
    after = [groups.at(-1)![0]!.userId, groups.at(-1)![0]!.projectId];
  }
}

/**
 * Mark versions' artifacts deleted by retention, each only if its row is unchanged since it was
 * read (same url and updated_at to the microsecond: a rebuild in between wins). Returns the keys of the rows marked.
 */
export async function markArtifactsDeleted(
  db: Queryable,
  rows: Array<Pick<StoredArtifactRow, 'userId' | 'projectId' | 'versionId' | 'artifactUrl' | 'stamp'> & { reason: string }>,
): Promise<Set<string>> {
  if (!rows.length) return new Set();
  const res = await db.query(
    `UPDATE project_versions v
        SET artifact_url = NULL, artifact_checksum = NULL, artifact_deleted_at = now(), artifact_deleted_reason = w.reason
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])
            AS w(user_id, project_id, version_id, url, stamp, reason)
      WHERE v.user_id = w.user_id AND v.project_id = w.project_id AND v.version_id = w.version_id
        AND v.artifact_url = w.url AND v.updated_at = w.stamp
      RETURNING v.user_id, v.project_id, v.version_id`,
    [
      rows.map((r) => r.userId),
      rows.map((r) => r.projectId),
      rows.map((r) => r.versionId),
      rows.map((r) => r.artifactUrl),
      rows.map((r) => r.stamp),
      rows.map((r) => r.reason),
    ],
  );
  return new Set(res.rows.map((r) => `${r.user_id as string}/${r.project_id as string}/${r.version_id as string}`));
}

/** Undo markArtifactsDeleted for versions whose object could not be deleted (it is still there). */
export async function restoreArtifacts(
  db: Queryable,
  rows: Array<Pick<StoredArtifactRow, 'userId' | 'projectId' | 'versionId' | 'artifactUrl' | 'artifactChecksum'>>,
): Promise<void> {
  if (!rows.length) return;
  await db.query(
    `UPDATE project_versions v
        SET artifact_url = w.url, artifact_checksum = w.checksum, artifact_deleted_at = NULL, artifact_deleted_reason = NULL
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS w(user_id, project_id, version_id, url, checksum)
      WHERE v.user_id = w.user_id AND v.project_id = w.project_id AND v.version_id = w.version_id AND v.artifact_url IS NULL`,
    [
      rows.map((r) => r.userId),
      rows.map((r) => r.projectId),
      rows.map((r) => r.versionId),
      rows.map((r) => r.artifactUrl),
      rows.map((r) => r.artifactChecksum),
    ],
  );
}
