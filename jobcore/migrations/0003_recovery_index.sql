-- The recovery sweep (api_client.recovery) and the worker's gauges look for open rows by the time
-- they were last touched: queue_failed rows past their grace period, pending rows whose message
-- may be lost. A partial index keeps both scans on the few open rows.
CREATE INDEX image_processing_jobs_unsent_updated_idx
    ON image_processing_jobs (status, updated_at) WHERE status IN ('pending', 'queue_failed');
