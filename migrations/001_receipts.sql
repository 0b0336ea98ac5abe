-- Up Migration
-- One row per finished job: what ran, how it ended, and what it produced.
CREATE TABLE job_receipts (
  queue        text        NOT NULL,
  job_id       text        NOT NULL,
  name         text        NOT NULL,
  status       text        NOT NULL CHECK (status IN ('completed', 'parked')),
  attempts     integer     NOT NULL,
  result       jsonb,
  error        text,
  finished_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (queue, job_id)
);
CREATE INDEX job_receipts_finished_at_idx ON job_receipts (finished_at DESC);

-- One row per object written: every byte accounted for.
CREATE TABLE upload_receipts (
  bucket      text        NOT NULL,
  key         text        NOT NULL,
  size        bigint      NOT NULL,
  sha256      text        NOT NULL,
  etag        text,
  status      text        NOT NULL,
  queue       text,
  job_id      text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (bucket, key)
);

-- Down Migration
DROP TABLE upload_receipts;
DROP TABLE job_receipts;
