-- Least-privilege group roles (NOLOGIN): the operator grants them to the login users the worker
-- and the producer connect as (docs/deploy.md), instead of running both as the owner/master user.
--   image_worker:   reads and updates job rows (claim, heartbeat, complete, fail, release, the
--                   queue gauges); never inserts or deletes one, never changes the schema.
--   image_producer: creates, reads and updates job rows (create, send, retry, redrive, the
--                   recovery sweep, stats); never deletes one, never changes the schema.
-- Migrations keep running as the owner. Roles are cluster-wide and several tasks (or databases
-- on one server) may run this at once: a role someone else just created is not an error.
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['image_worker', 'image_producer'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created concurrently by another migration run
            END;
        END IF;
    END LOOP;
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO image_worker, image_producer',
                   current_database());
END
$$;
GRANT USAGE ON SCHEMA public TO image_worker, image_producer;
GRANT SELECT, UPDATE ON TABLE image_processing_jobs TO image_worker;
GRANT SELECT, INSERT, UPDATE ON TABLE image_processing_jobs TO image_producer;
