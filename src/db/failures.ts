/** SQL for failure_matches. Every read and write is scoped to one tenant, except the aggregation. */
import type { Db } from './pool.js';
import type { Queryable } from './upload-receipts.js';

export interface FailureRecord {
  id: string;
  tenantId: string;
  errorCode: string;
  category: string | null;
  message: string;
  signature: string;
  catalogEntry: string | null;
  recoveryMode: string | null;
  recoverySucceeded: boolean | null;
  recoveredBy: string | null;
  recoveredAt: Date | null;
  notes: string | null;
  createdAt: Date;
}

export type NewFailure = Omit<FailureRecord, 'recoveredBy' | 'recoveredAt' | 'notes'>;

const COLUMNS = `id, tenant_id, error_code, category, message, signature, catalog_entry, recovery_mode,
  recovery_succeeded, recovered_by, recovered_at, notes, created_at`;

function q(db: Db | Queryable): Queryable {
  return 'pool' in db ? db.pool : db;
}

function toRecord(r: Record<string, unknown>): FailureRecord {
  return {
    id: r.id as string,
    tenantId: r.tenant_id as string,
    errorCode: r.error_code as string,
    category: (r.category as string | null) ?? null,
    message: r.message as string,
    signature: r.signature as string,
    catalogEntry: (r.catalog_entry as string | null) ?? null,
    recoveryMode: (r.recovery_mode as string | null) ?? null,
    recoverySucceeded: (r.recovery_succeeded as boolean | null) ?? null,
    recoveredBy: (r.recovered_by as string | null) ?? null,
    recoveredAt: (r.recovered_at as Date | null) ?? null,
    notes: (r.notes as string | null) ?? null,
    createdAt: r.created_at as Date,
  };
}

/** Insert a batch in one statement. Idempotent by id: a batch written twice (writer retry) is written once. */
export async function insertFailures(db: Db | Queryable, rows: NewFailure[]): Promise<number> {
  if (!rows.length) return 0;
  const col = <T>(f: (r: NewFailure) => T) => rows.map(f);
  const res = await q(db).query(
    `INSERT INTO failure_matches (id, tenant_id, error_code, category, message, signature, catalog_entry,
                                  recovery_mode, recovery_succeeded, created_at)
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                          $8::text[], $9::boolean[], $10::timestamptz[])
     ON CONFLICT (id) DO NOTHING`,
    [
      col((r) => r.id),
      col((r) => r.tenantId),
      col((r) => r.errorCode),
      col((r) => r.category),
      col((r) => r.message),
      col((r) => r.signature),
      col((r) => r.catalogEntry),
      col((r) => r.recoveryMode),
      col((r) => r.recoverySucceeded),
      col((r) => r.createdAt),
    ],
  );
  return res.rowCount ?? 0;
}

export interface FailureFilter {
  errorCode?: string;
  category?: string;
  since?: Date;
  /** true: recovery succeeded; false: not (yet) recovered. */
  recovered?: boolean;
  limit: number;
  offset: number;
}

/** Newest first. */
export async function listFailures(db: Db | Queryable, tenantId: string, f: FailureFilter): Promise<FailureRecord[]> {
  const { rows } = await q(db).query(
    `SELECT ${COLUMNS} FROM failure_matches
      WHERE tenant_id = $1
        AND ($2::text IS NULL OR error_code = $2)
        AND ($3::text IS NULL OR category = $3)
        AND ($4::timestamptz IS NULL OR created_at >= $4)
        AND ($5::boolean IS NULL OR (recovery_succeeded IS TRUE) = $5)
      ORDER BY created_at DESC, id DESC
      LIMIT $6 OFFSET $7`,
    [tenantId, f.errorCode ?? null, f.category ?? null, f.since ?? null, f.recovered ?? null, f.limit, f.offset],
  );
  return rows.map(toRecord);
}

export async function getFailure(db: Db | Queryable, tenantId: string, id: string): Promise<FailureRecord | null> {
  const { rows } = await q(db).query(`SELECT ${COLUMNS} FROM failure_matches WHERE tenant_id = $1 AND id = $2`, [tenantId, id]);
  return rows[0] ? toRecord(rows[0]) : null;
}

/** Not recovered (no recovery yet, or a failed one) in the last `sinceHours`, newest first. */
export async function listUnrecovered(db: Db | Queryable, tenantId: string, sinceHours: number, limit: number): Promise<FailureRecord[]> {
  const { rows } = await q(db).query(
    `SELECT ${COLUMNS} FROM failure_matches
      WHERE tenant_id = $1 AND recovery_succeeded IS NOT TRUE AND created_at >= now() - make_interval(hours => $2)
      ORDER BY created_at DESC, id DESC LIMIT $3`,
    [tenantId, sinceHours, limit],
  );
  return rows.map(toRecord);
}

/** Record a recovery outcome; null when the tenant has no such failure. */
export async function markRecovery(
  db: Db | Queryable,
  tenantId: string,
  id: string,
  r: { succeeded: boolean; recoveredBy: string; notes: string | null },
): Promise<FailureRecord | null> {
  const { rows } = await q(db).query(
    `UPDATE failure_matches
        SET recovery_succeeded = $3, recovered_by = $4, notes = $5, recovered_at = now()
      WHERE tenant_id = $1 AND id = $2
      RETURNING ${COLUMNS}`,
    [tenantId, id, r.succeeded, r.recoveredBy, r.notes],
  );
  return rows[0] ? toRecord(rows[0]) : null;
}

export interface FailureStats {
  total: number;
  matched: number;
  unmatched: number;
  recovered: number;
  recoveryFailed: number;
  unrecovered: number;
  topErrorCodes: { errorCode: string; count: number }[];
  byCategory: { category: string | null; count: number }[];
}

export async function failureStats(db: Db | Queryable, tenantId: string, since: Date | null): Promise<FailureStats> {
  const params = [tenantId, since];
  const where = `tenant_id = $1 AND ($2::timestamptz IS NULL OR created_at >= $2)`;
  const [totals, codes, categories] = await Promise.all([
    q(db).query(
      `SELECT count(*)::int AS total,
              count(*) FILTER (WHERE catalog_entry IS NOT NULL)::int AS matched,
              count(*) FILTER (WHERE recovery_succeeded IS TRUE)::int AS recovered,
              count(*) FILTER (WHERE recovery_succeeded IS FALSE)::int AS recovery_failed
         FROM failure_matches WHERE ${where}`,
      params,
    ),
    q(db).query(
      `SELECT error_code, count(*)::int AS n FROM failure_matches WHERE ${where}
        GROUP BY error_code ORDER BY n DESC, error_code LIMIT 20`,
      params,
    ),
    q(db).query(
      `SELECT category, count(*)::int AS n FROM failure_matches WHERE ${where}
        GROUP BY category ORDER BY n DESC, category NULLS LAST`,
      params,
    ),
  ]);
  const t = totals.rows[0] as { total: number; matched: number; recovered: number; recovery_failed: number };
  return {
    total: t.total,
    matched: t.matched,
    unmatched: t.total - t.matched,
    recovered: t.recovered,
    recoveryFailed: t.recovery_failed,
    unrecovered: t.total - t.recovered,
    topErrorCodes: codes.rows.map((r) => ({ errorCode: r.error_code as string, count: r.n as number })),
    byCategory: categories.rows.map((r) => ({ category: (r.category as string | null) ?? null, count: r.n as number })),
  };
}

export interface CandidatePatternRow {
  errorCode: string;
  signature: string;
  count: number;
  tenants: string[];
  firstSeen: Date;
  lastSeen: Date;
  samples: string[];
}

/**
 * Candidate patterns across tenants in [from, to): failures grouped by error code and signature,
 * those with at least `minOccurrences`. Deterministic order (count desc, then code and signature);
 * samples are the oldest distinct messages.
 */
export async function candidatePatterns(
  db: Db | Queryable,
  w: { from: Date; to: Date; minOccurrences: number; samples: number },
): Promise<CandidatePatternRow[]> {
  const { rows } = await q(db).query(
    `SELECT error_code, signature, count(*)::int AS n,
            array_agg(DISTINCT tenant_id ORDER BY tenant_id) AS tenants,
            min(created_at) AS first_seen, max(created_at) AS last_seen,
            (array_agg(message ORDER BY created_at, id))[1:$4] AS samples
       FROM failure_matches
      WHERE created_at >= $1 AND created_at < $2
      GROUP BY error_code, signature
     HAVING count(*) >= $3
      ORDER BY n DESC, error_code, signature`,
    [w.from, w.to, w.minOccurrences, w.samples],
  );
  return rows.map((r) => ({
    errorCode: r.error_code as string,
    signature: r.signature as string,
    count: r.n as number,
    tenants: r.tenants as string[],
    firstSeen: r.first_seen as Date,
    lastSeen: r.last_seen as Date,
    samples: r.samples as string[],
  }));
}
