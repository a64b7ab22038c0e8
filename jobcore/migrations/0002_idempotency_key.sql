-- A caller-supplied key that makes job creation idempotent: a repeat finds the existing row.
-- Adding a nullable column without a default only touches the catalog. The index is partial (only
-- rows that carry a key), so on an existing table it is built from an index-only-sized scan and
-- stays small; NULL keys (jobs created without one) never conflict.
ALTER TABLE image_processing_jobs ADD COLUMN idempotency_key text;

CREATE UNIQUE INDEX image_processing_jobs_idempotency_key_idx
    ON image_processing_jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
