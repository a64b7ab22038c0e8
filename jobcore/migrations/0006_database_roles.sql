-- Least-privilege group roles (NOLOGIN): the operator grants them to the login users the worker
-- and the producer connect as (docs/deploy.md), instead of running both as the owner/master user.
--   image_worker:   reads and updates job rows (claim, heartbeat, complete, fail, release, the
--                   queue gauges); never inserts or deletes one, never changes the schema.
--   image_producer: creates, reads, updates and deletes job rows (create, send, cancel, retry,
--                   redrive, the recovery sweep, stats, delete_jobs); never changes the schema.
-- Migrations keep running as the owner. Roles are cluster-wide and several tasks (or databases
-- on one server) may run this at once: a role someone else just created is not an error. An owner
-- that may not create roles (no CREATEROLE) skips the roles it cannot make, with a NOTICE: the
-- operator creates them and runs the same grants by hand (docs/deploy.md).
DO $$
DECLARE
    role_name text;
    may_create boolean;
BEGIN
    SELECT rolsuper OR rolcreaterole INTO may_create FROM pg_catalog.pg_roles
     WHERE rolname = current_user;
    FOREACH role_name IN ARRAY ARRAY['image_worker', 'image_producer'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            IF NOT may_create THEN
                RAISE NOTICE 'role % not created: % may not create roles (CREATEROLE)',
                    role_name, current_user;
                CONTINUE;
            END IF;
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created concurrently by another migration run
            END;
        END IF;
    END LOOP;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'image_worker') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO image_worker', current_database());
        GRANT USAGE ON SCHEMA public TO image_worker;
        GRANT SELECT, UPDATE ON TABLE image_processing_jobs TO image_worker;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'image_producer') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO image_producer', current_database());
        GRANT USAGE ON SCHEMA public TO image_producer;
        GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE image_processing_jobs TO image_producer;
    END IF;
END
$$;
