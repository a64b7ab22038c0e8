-- Hearing back: a cancelled status, the cancel request of a running job, the event outbox flag,
-- and a NOTIFY on every status change.

ALTER TABLE image_processing_jobs DROP CONSTRAINT image_processing_jobs_status_check;
ALTER TABLE image_processing_jobs ADD CONSTRAINT image_processing_jobs_status_check
    CHECK (status IN ('pending', 'queue_failed', 'processing', 'completed', 'failed', 'cancelled'));

-- A running job cannot be stopped from outside: the request is recorded here and its worker ends
-- the job as `cancelled` at its next check. Nullable columns without defaults and a constant
-- default only touch the catalog.
ALTER TABLE image_processing_jobs
    ADD COLUMN cancel_requested_at timestamptz,
    ADD COLUMN cancel_reason       text,
    -- The job-finished event is owed (the outbox): set in the UPDATE that finishes the job,
    -- cleared once the event is published to SNS.
    ADD COLUMN event_pending       boolean NOT NULL DEFAULT false;

-- The sweep's event catch-up reads only the few rows whose event is still owed.
CREATE INDEX image_processing_jobs_event_pending_idx
    ON image_processing_jobs (completed_at) WHERE event_pending;

-- Channel `image_jobs`, payload {"id": ..., "status": ..., "book_id": ...}. A NOTIFY is delivered
-- at commit, only if the transaction commits, once per distinct payload per transaction. A
-- payload must stay under 8000 bytes or the writing statement fails: a book_id over 4000 bytes is
-- sent as null (the row has it).
CREATE FUNCTION image_processing_jobs_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'image_jobs',
        json_build_object(
            'id', NEW.id,
            'status', NEW.status,
            'book_id', CASE WHEN octet_length(NEW.book_id) <= 4000 THEN NEW.book_id END
        )::text
    );
    RETURN NULL;
END
$$;

CREATE TRIGGER image_processing_jobs_notify_insert
    AFTER INSERT ON image_processing_jobs
    FOR EACH ROW EXECUTE FUNCTION image_processing_jobs_notify();

CREATE TRIGGER image_processing_jobs_notify_status
    AFTER UPDATE OF status ON image_processing_jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION image_processing_jobs_notify();
