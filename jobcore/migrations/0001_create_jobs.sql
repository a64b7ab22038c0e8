CREATE TABLE image_processing_jobs (
    id               uuid PRIMARY KEY,
    book_id          text,
    source_bucket    text        NOT NULL,
    source_key       text        NOT NULL,
    result_bucket    text,
    result_key       text,
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    error            text,
    model            text,
    claimed_by       text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    CONSTRAINT image_processing_jobs_status_check
        CHECK (status IN ('pending', 'queue_failed', 'processing', 'completed', 'failed')),
    CONSTRAINT image_processing_jobs_completed_has_result
        CHECK (status <> 'completed' OR (result_bucket IS NOT NULL AND result_key IS NOT NULL))
);

-- list_jobs / stats: by status, oldest first.
CREATE INDEX image_processing_jobs_status_created_idx
    ON image_processing_jobs (status, created_at);
-- retry_queue_failed scans only the few rows whose send failed.
CREATE INDEX image_processing_jobs_queue_failed_idx
    ON image_processing_jobs (created_at) WHERE status = 'queue_failed';
-- the API looks jobs up by its own reference.
CREATE INDEX image_processing_jobs_book_id_idx
    ON image_processing_jobs (book_id) WHERE book_id IS NOT NULL;
