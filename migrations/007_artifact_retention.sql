-- Up Migration
-- Artifact retention (src/cleanup/artifact-retention.ts) deletes old versions' artifacts and says so
-- on the row: artifact_url and artifact_checksum become NULL, these two record when and why.
-- artifact_size stays as history. A rebuild of the version (a new upload) clears both.
ALTER TABLE project_versions
  ADD COLUMN artifact_deleted_at     timestamptz,
  ADD COLUMN artifact_deleted_reason text;

-- Down Migration
ALTER TABLE project_versions DROP COLUMN artifact_deleted_reason, DROP COLUMN artifact_deleted_at;
