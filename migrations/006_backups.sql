-- Up Migration
-- One row per backup archive (the `backup` job). Retention marks rows deleted, never removes them.
CREATE TABLE backups (
  id            bigserial   PRIMARY KEY,
  set_name      text        NOT NULL,
  bucket        text        NOT NULL,
  key           text        NOT NULL,
  -- When the snapshots were taken (the time in the key).
  taken_at      timestamptz NOT NULL,
  size          bigint      NOT NULL CHECK (size >= 0),
  sha256        text        NOT NULL,
  -- completed: uploaded, size confirmed; deleted: removed by retention or by hand.
  status        text        NOT NULL CHECK (status IN ('completed', 'deleted')),
  -- Every snapshot passed PRAGMA quick_check and the stored size matched.
  verified      boolean     NOT NULL DEFAULT false,
  -- The archive's backup-metadata.json `databases` array.
  databases     jsonb       NOT NULL DEFAULT '[]'::jsonb,
  queue         text,
  job_id        text,
  created_at    timestamptz NOT NULL DEFAULT now(),
  deleted_at    timestamptz,
  deleted_reason text,
  UNIQUE (bucket, key)
);
CREATE INDEX backups_set_taken_idx ON backups (set_name, taken_at DESC);

-- Down Migration
DROP TABLE backups;
