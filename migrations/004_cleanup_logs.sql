-- Up Migration
-- One row per cleanup run (the `cleanup` job or `stowage cleanup`), dry runs included.
CREATE TABLE r2_cleanup_logs (
  id           bigserial   PRIMARY KEY,
  started_at   timestamptz NOT NULL,
  finished_at  timestamptz NOT NULL,
  -- What ran, '+'-joined: objects, orphaned-packs, lifecycle, multipart.
  mode         text        NOT NULL,
  -- Keys listed in scope (sidecars included) plus incomplete multipart uploads listed.
  scanned      bigint      NOT NULL DEFAULT 0 CHECK (scanned >= 0),
  -- Keys deleted (sidecars included) plus multipart uploads aborted; in a dry run, what would be.
  deleted      bigint      NOT NULL DEFAULT 0 CHECK (deleted >= 0),
  bytes_freed  bigint      NOT NULL DEFAULT 0 CHECK (bytes_freed >= 0),
  errors       integer     NOT NULL DEFAULT 0 CHECK (errors >= 0),
  dry_run      boolean     NOT NULL,
  bucket       text,
  prefix       text,
  queue        text,
  job_id       text,
  -- Per-mode counts and the first error messages.
  details      jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX r2_cleanup_logs_started_idx ON r2_cleanup_logs (started_at DESC);

-- Down Migration
DROP TABLE r2_cleanup_logs;
