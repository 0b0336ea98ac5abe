/** SQL for r2_cleanup_logs: one row per cleanup run (job or CLI), dry runs included. */
import type { Db } from './pool.js';
import type { Queryable } from './upload-receipts.js';

export interface CleanupLog {
  startedAt: Date;
  finishedAt: Date;
  mode: string;
  scanned: number;
  deleted: number;
  bytesFreed: number;
  errors: number;
  dryRun: boolean;
  bucket: string | null;
  prefix: string | null;
  queue: string | null;
  jobId: string | null;
  details: Record<string, unknown>;
}

const COLUMNS = 'id, started_at, finished_at, mode, scanned, deleted, bytes_freed, errors, dry_run, bucket, prefix, queue, job_id, details';

function toLog(r: Record<string, unknown>): CleanupLog & { id: number } {
  return {
    // bigint columns arrive as strings; the counts stay far below 2^53.
    id: Number(r.id),
    startedAt: r.started_at as Date,
    finishedAt: r.finished_at as Date,
    mode: r.mode as string,
    scanned: Number(r.scanned),
    deleted: Number(r.deleted),
    bytesFreed: Number(r.bytes_freed),
    errors: Number(r.errors),
    dryRun: r.dry_run as boolean,
    bucket: (r.bucket as string | null) ?? null,
    prefix: (r.prefix as string | null) ?? null,
    queue: (r.queue as string | null) ?? null,
    jobId: (r.job_id as string | null) ?? null,
    details: (r.details as Record<string, unknown>) ?? {},
  };
}

export async function insertCleanupLog(db: Queryable, log: CleanupLog): Promise<number> {
  const { rows } = await db.query(
    `INSERT INTO r2_cleanup_logs (started_at, finished_at, mode, scanned, deleted, bytes_freed, errors, dry_run, bucket, prefix, queue, job_id, details)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
     RETURNING id`,
    [
      log.startedAt,
      log.finishedAt,
      log.mode,
      log.scanned,
      log.deleted,
      log.bytesFreed,
      log.errors,
      log.dryRun,
      log.bucket,
      log.prefix,
      log.queue,
      log.jobId,
      JSON.stringify(log.details),
    ],
  );
  return Number(rows[0].id);
}

/** The newest runs first. */
export async function listCleanupLogs(db: Db, limit = 50): Promise<Array<CleanupLog & { id: number }>> {
  const { rows } = await db.pool.query(`SELECT ${COLUMNS} FROM r2_cleanup_logs ORDER BY started_at DESC, id DESC LIMIT $1`, [limit]);
  return rows.map(toLog);
}

/**
 * Of the given project versions, those that have a row in project_versions, as
 * `user/project/version` strings (the orphaned-pack cleanup's question). One query per 5000.
 */
export async function existingProjectVersions(
  db: Queryable,
  versions: Array<{ userId: string; projectId: string; versionId: string }>,
): Promise<Set<string>> {
  const found = new Set<string>();
  for (let i = 0; i < versions.length; i += 5000) {
    const chunk = versions.slice(i, i + 5000);
    const { rows } = await db.query(
      `SELECT v.user_id, v.project_id, v.version_id
         FROM project_versions v
         JOIN unnest($1::text[], $2::text[], $3::text[]) AS w(user_id, project_id, version_id)
           USING (user_id, project_id, version_id)`,
      [chunk.map((c) => c.userId), chunk.map((c) => c.projectId), chunk.map((c) => c.versionId)],
    );
    for (const r of rows) found.add(`${r.user_id as string}/${r.project_id as string}/${r.version_id as string}`);
  }
  return found;
}
