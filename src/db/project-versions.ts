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
}

export interface ArtifactColumns {
  userId: string;
  projectId: string;
  versionId: string;
  artifactUrl: string;
  artifactSize: number;
  artifactChecksum: string;
}

const COLUMNS = 'user_id, project_id, version_id, artifact_url, artifact_size, artifact_checksum, created_at, updated_at';

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
  };
}

/**
 * Record a version's artifact in one idempotent statement: creates the row, or updates only the
 * artifact columns of an existing one (created_at and any application columns stay).
 */
export async function upsertProjectVersionArtifact(db: Queryable, v: ArtifactColumns): Promise<ProjectVersion> {
  const { rows } = await db.query(
    `INSERT INTO project_versions (user_id, project_id, version_id, artifact_url, artifact_size, artifact_checksum)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (user_id, project_id, version_id) DO UPDATE
       SET artifact_url = EXCLUDED.artifact_url, artifact_size = EXCLUDED.artifact_size,
           artifact_checksum = EXCLUDED.artifact_checksum, updated_at = now()
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
