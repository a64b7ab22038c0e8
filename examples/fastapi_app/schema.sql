-- The example app's own tables and its completion hook (schema `app`). Idempotent: the example
-- runs it at startup; in your app, your migrations own it.
CREATE SCHEMA IF NOT EXISTS app;

CREATE TABLE IF NOT EXISTS app.books (
    book_id     text PRIMARY KEY,
    title       text NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now()
);

-- A book's images in display order (position 0 first); at most one primary. `background_removed`:
-- a cut-out made by image-worker.
CREATE TABLE IF NOT EXISTS app.book_images (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    book_id            text NOT NULL REFERENCES app.books ON DELETE CASCADE,
    bucket             text NOT NULL,
    key                text NOT NULL,
    position           integer NOT NULL,
    is_primary         boolean NOT NULL DEFAULT false,
    background_removed boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS book_images_one_primary ON app.book_images (book_id)
    WHERE is_primary;
CREATE INDEX IF NOT EXISTS book_images_by_book ON app.book_images (book_id, position);

-- The app's record of each job it asked for: which image it was for and, once attached, the new
-- image (the library's job table stays the library's).
CREATE TABLE IF NOT EXISTS app.image_jobs (
    job_id             uuid PRIMARY KEY,
    book_id            text NOT NULL REFERENCES app.books ON DELETE CASCADE,
    source_image_id    bigint REFERENCES app.book_images ON DELETE SET NULL,
    processed_image_id bigint REFERENCES app.book_images ON DELETE SET NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    attached_at        timestamptz
);
CREATE INDEX IF NOT EXISTS image_jobs_unattached ON app.image_jobs (job_id) WHERE attached_at IS NULL;

-- Attach a completed job's cut-out (its output named "image") to its book as the new first,
-- primary image, and record it on app.image_jobs. Called by the worker inside the transaction
-- that completes the job (COMPLETION_HOOK=app.attach_processed_image), or by the app's listener.
-- Idempotent: a job already attached, or one this app did not ask for, changes nothing.
-- SECURITY DEFINER: the worker's role needs EXECUTE on this function only, no rights on app.*.
CREATE OR REPLACE FUNCTION app.attach_processed_image(p_job_id uuid, p_book_id text, p_outputs jsonb)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = app, pg_temp
AS $$
DECLARE
    image  jsonb;
    new_id bigint;
BEGIN
    -- One attach per book at a time: positions are renumbered below.
    PERFORM 1 FROM app.books WHERE book_id = p_book_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM 1 FROM app.image_jobs
      WHERE job_id = p_job_id AND book_id = p_book_id AND processed_image_id IS NULL
        AND attached_at IS NULL;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF jsonb_typeof(p_outputs) = 'array' THEN
        SELECT o INTO image FROM jsonb_array_elements(p_outputs) AS o
         WHERE o->>'name' = 'image' LIMIT 1;
    END IF;
    IF image IS NULL OR image->>'bucket' IS NULL OR image->>'key' IS NULL THEN
        RAISE EXCEPTION 'job % has no "image" output to attach', p_job_id;
    END IF;
    UPDATE app.book_images SET position = position + 1, is_primary = false
     WHERE book_id = p_book_id;
    INSERT INTO app.book_images (book_id, bucket, key, position, is_primary, background_removed)
    VALUES (p_book_id, image->>'bucket', image->>'key', 0, true, true)
    RETURNING id INTO new_id;
    UPDATE app.image_jobs SET processed_image_id = new_id, attached_at = now()
     WHERE job_id = p_job_id;
END
$$;

-- Only the worker may call it (as the completion hook): the image_worker group role of the
-- library's migrations, when it exists; your app's own role calls it as the owner.
REVOKE ALL ON FUNCTION app.attach_processed_image(uuid, text, jsonb) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'image_worker') THEN
        GRANT USAGE ON SCHEMA app TO image_worker;
        GRANT EXECUTE ON FUNCTION app.attach_processed_image(uuid, text, jsonb) TO image_worker;
    END IF;
END
$$;
