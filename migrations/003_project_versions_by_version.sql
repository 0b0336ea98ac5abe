-- Up Migration
-- GET /v1/versions/:versionId/download looks a version up by its owner and id alone.
CREATE INDEX project_versions_user_version_idx ON project_versions (user_id, version_id);

-- Down Migration
DROP INDEX project_versions_user_version_idx;
