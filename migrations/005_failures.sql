-- Up Migration
-- Failure catalog: one row per failure a service reported. tenant_id is NOT NULL from the start
-- (the seed's known issue: a nullable tenant let rows leak across tenants).
CREATE TABLE failure_matches (
  id                  uuid        PRIMARY KEY,
  tenant_id           text        NOT NULL,
  error_code          text        NOT NULL,
  category            text,
  message             text        NOT NULL,
  -- The message with numbers, ids, hex and quoted values masked (see src/failures/signature.ts).
  signature           text        NOT NULL,
  catalog_entry       text,
  recovery_mode       text,
  recovery_succeeded  boolean,
  recovered_by        text,
  recovered_at        timestamptz,
  notes               text,
  created_at          timestamptz NOT NULL DEFAULT now()
);
-- GET /api/v1/failures (newest first, optional error_code/category filters) and /stats.
CREATE INDEX failure_matches_tenant_created_idx ON failure_matches (tenant_id, created_at DESC, id DESC);
CREATE INDEX failure_matches_tenant_code_created_idx ON failure_matches (tenant_id, error_code, created_at DESC);
CREATE INDEX failure_matches_tenant_category_created_idx ON failure_matches (tenant_id, category, created_at DESC);
-- GET /api/v1/failures/unrecovered: small, since recovered rows leave it.
CREATE INDEX failure_matches_unrecovered_idx ON failure_matches (tenant_id, created_at DESC)
  WHERE recovery_succeeded IS NOT TRUE;
-- The aggregation job scans a time window across tenants.
CREATE INDEX failure_matches_created_idx ON failure_matches (created_at);

-- Audit trail of aggregation exports: one row per export, updated on every upload attempt.
CREATE TABLE failure_pattern_exports (
  id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
  -- The object key the export has (or will have once a retry uploads it).
  s3_key         text        NOT NULL,
  -- The file in AGG_LOCAL_FALLBACK while the store could not take it; null once uploaded.
  local_path     text,
  uploaded_at    timestamptz,
  uploader       text,
  size_bytes     bigint,
  sha256         text,
  status         text        NOT NULL CHECK (status IN ('uploaded', 'fallback_local', 'retrying', 'failed')),
  notes          text,
  retry_count    integer     NOT NULL DEFAULT 0,
  last_retry_at  timestamptz,
  created_at     timestamptz NOT NULL DEFAULT now()
);
-- The fallback retry worker: pending files oldest first.
CREATE INDEX failure_pattern_exports_pending_idx ON failure_pattern_exports (created_at)
  WHERE local_path IS NOT NULL AND status IN ('fallback_local', 'retrying');

-- Down Migration
DROP TABLE failure_pattern_exports;
DROP TABLE failure_matches;
