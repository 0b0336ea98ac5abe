-- Up Migration
-- One row per project version that has (or had) a stored artifact. The application may create
-- rows of its own; the build-artifact job only ever upserts the artifact columns.
CREATE TABLE project_versions (
  user_id            text        NOT NULL,
  project_id         text        NOT NULL,
  version_id         text        NOT NULL,
  -- s3://{bucket}/{key}; NULL while the version has no artifact.
  artifact_url       text,
  artifact_size      bigint      CHECK (artifact_size >= 0),
  -- SHA-256 of the artifact object, lowercase hex.
  artifact_checksum  text        CHECK (artifact_checksum ~ '^[0-9a-f]{64}$'),
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, project_id, version_id),
  CHECK ((artifact_url IS NULL) = (artifact_checksum IS NULL))
);
-- "Latest version with an artifact" per project: an index-only walk from the newest.
CREATE INDEX project_versions_latest_artifact_idx
  ON project_versions (user_id, project_id, created_at DESC)
  WHERE artifact_url IS NOT NULL;

-- Down Migration
DROP TABLE project_versions;
