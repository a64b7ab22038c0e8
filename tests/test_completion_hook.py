"""The completion hook (COMPLETION_HOOK) on the real stack: a real PostgreSQL function that records
the new image in an app's table atomically with the completion, one that raises (the completion
is rolled back and the attempt fails as transient with its error), and a missing one (or one with
the wrong arguments, or not executable by the worker's role) refusing the start."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from api_client.client import JobClient
from jobcore.event_outbox import single_output
from tests.conftest import Aws, StartWorker, worker_env
from tests.helpers import (
    check_lines,
    contract_fields,
    scrape,
    selfcheck,
    synthetic_scene,
    wait_finished,
)
from worker.completion_hook import CompletionHookMissing, check_completion_hook
from worker.errors import FailureKind, JobFailed
from worker.job_table import Completion, JobStore
from worker.selfcheck import EXIT_FAILED
from worker.settings import Settings, SettingsError

APP_SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE app.book_images (
    job_id  uuid PRIMARY KEY,
    book_id text NOT NULL,
    outputs jsonb NOT NULL,
    is_primary boolean NOT NULL DEFAULT true
);
CREATE FUNCTION app.attach_processed_image(job_id uuid, book_id text, outputs jsonb)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO app.book_images (job_id, book_id, outputs) VALUES (job_id, book_id, outputs)
$$;
CREATE FUNCTION app.refuse_image(job_id uuid, book_id text, outputs jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'book % is gone', book_id;
END
$$;
CREATE FUNCTION app.two_arguments(job_id uuid, book_id text)
RETURNS void LANGUAGE sql AS $$ SELECT 1 $$;
"""


@pytest.fixture
async def app_db(db: asyncpg.Pool) -> asyncpg.Pool:
    await db.execute(APP_SCHEMA)
    return db


async def claimed_job(db: asyncpg.Pool, store: JobStore, book_id: str) -> uuid.UUID:
    job_id = uuid.uuid4()
    await db.execute(
        """INSERT INTO image_processing_jobs (id, book_id, source_bucket, source_key)
           VALUES ($1, $2, 'photos', 'a.jpg')""",
        job_id,
        book_id,
    )
    assert (await store.claim(job_id, model="u2netp", lease_seconds=30)).job is not None
    return job_id


async def test_the_hook_writes_in_the_completing_transaction(app_db: asyncpg.Pool) -> None:
    store = JobStore(app_db, "w1", completion_hook="app.attach_processed_image")
    job_id = await claimed_job(app_db, store, "book-1")
    outputs = single_output("results", f"cutouts/{job_id}.png")
    assert await store.complete(job_id, "results", f"cutouts/{job_id}.png", outputs) is (
        Completion.COMPLETED
    )
    image = await app_db.fetchrow("SELECT * FROM app.book_images WHERE job_id = $1", job_id)
    assert image is not None
    assert image["book_id"] == "book-1"
    assert json.loads(image["outputs"]) == outputs
    status = await app_db.fetchval("SELECT status FROM image_processing_jobs WHERE id = $1", job_id)
    assert status == "completed"


async def test_a_failing_hook_rolls_the_completion_back(app_db: asyncpg.Pool) -> None:
    store = JobStore(app_db, "w1", completion_hook="app.refuse_image")
    job_id = await claimed_job(app_db, store, "book-2")
    with pytest.raises(JobFailed) as failed:
        await store.complete(job_id, "results", "k.png", single_output("results", "k.png"))
    assert failed.value.failure.kind is FailureKind.TRANSIENT
    assert failed.value.failure.code == "completion_hook"
    assert failed.value.failure.reason == (
        "completion hook app.refuse_image failed: book book-2 is gone"
    )
    after = await app_db.fetchrow(
        "SELECT status, result_key, completed_at FROM image_processing_jobs WHERE id = $1", job_id
    )
    assert dict(after) == {"status": "processing", "result_key": None, "completed_at": None}


async def test_the_start_check_names_what_is_wrong(app_db: asyncpg.Pool, database_url: str) -> None:
    await check_completion_hook(app_db, "app.attach_processed_image")
    with pytest.raises(CompletionHookMissing, match=r"no function app\.nope\(uuid, text, jsonb\)"):
        await check_completion_hook(app_db, "app.nope")
    with pytest.raises(CompletionHookMissing, match=r"no function app\.two_arguments\(uuid"):
        await check_completion_hook(app_db, "app.two_arguments")
    with pytest.raises(CompletionHookMissing, match=r"no function nosuchschema\.f"):
        await check_completion_hook(app_db, "nosuchschema.f")

    role = f"hook_tester_{uuid.uuid4().hex[:8]}"
    await app_db.execute(
        f"""CREATE ROLE {role} LOGIN;
            GRANT USAGE ON SCHEMA app TO {role};
            REVOKE EXECUTE ON FUNCTION app.attach_processed_image(uuid, text, jsonb) FROM PUBLIC"""
    )
    parts = urlsplit(database_url)
    as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
    conn = await asyncpg.connect(as_role)
    try:
        with pytest.raises(CompletionHookMissing, match="may not execute"):
            await check_completion_hook(conn, "app.attach_processed_image")
    finally:
        await conn.close()
        await app_db.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_a_hook_name_that_is_no_identifier_stops_the_start(database_url: str, aws: Aws) -> None:
    for name in ("app.f(); DROP TABLE x", "a.b.c", "1app.f", "app-f"):
        env = worker_env(database_url, aws, Path("."), COMPLETION_HOOK=name)
        with pytest.raises(SettingsError, match=r"COMPLETION_HOOK=.* is not a function name"):
            Settings.from_env(env)


@pytest.mark.slow  # a worker start
async def test_a_worker_with_the_hook_attaches_each_cut_out(
    app_db: asyncpg.Pool, start_worker: StartWorker, producer: JobClient, aws: Aws
) -> None:
    await start_worker(COMPLETION_HOOK="app.attach_processed_image")
    scene, _ = synthetic_scene((320, 240))
    await aws.put("sources/scene.jpg", scene)
    job = await producer.create_job("sources/scene.jpg", book_id="book-9")
    done = (await wait_finished(producer, [job.id]))[job.id]
    assert done.status.value == "completed", done.error
    image = await app_db.fetchrow("SELECT * FROM app.book_images WHERE job_id = $1", job.id)
    assert image is not None
    assert image["book_id"] == "book-9"
    assert contract_fields(json.loads(image["outputs"])) == single_output(
        aws.bucket, f"cutouts/{job.id}.png"
    )


@pytest.mark.slow  # a worker start
async def test_a_worker_whose_hook_raises_fails_the_attempt_with_its_error(
    app_db: asyncpg.Pool, start_worker: StartWorker, producer: JobClient, aws: Aws
) -> None:
    worker = await start_worker(COMPLETION_HOOK="app.refuse_image", MAX_ATTEMPTS="1")
    scene, _ = synthetic_scene((320, 240))
    await aws.put("sources/scene.jpg", scene)
    job = await producer.create_job("sources/scene.jpg", book_id="book-3")
    done = (await wait_finished(producer, [job.id]))[job.id]
    assert done.status.value == "failed"
    assert done.error == (
        "gave up after 1 attempts: completion hook app.refuse_image failed: book book-3 is gone"
    )
    metrics = await scrape(worker.url)
    assert (
        metrics['image_worker_job_failures_total{kind="transient",reason="completion_hook"}'] == 1
    )
    assert metrics['image_worker_jobs_total{outcome="completed"}'] == 0


async def test_a_missing_hook_refuses_the_start(
    app_db: asyncpg.Pool, start_worker: StartWorker
) -> None:
    with pytest.raises(CompletionHookMissing, match=r"COMPLETION_HOOK=app\.attach_image: no func"):
        await start_worker(COMPLETION_HOOK="app.attach_image")


@pytest.mark.slow  # selfcheck processes
async def test_the_deploy_gate_checks_the_hook(
    app_db: asyncpg.Pool, database_url: str, aws: Aws, model_home: Path
) -> None:
    good = worker_env(database_url, aws, model_home, RESULT_BUCKET=aws.bucket,
                      COMPLETION_HOOK="app.attach_processed_image")  # fmt: skip
    passed = selfcheck(good)
    assert passed.returncode == 0, passed.stderr
    assert "completion hook: app.attach_processed_image(uuid, text, jsonb) executable" in (
        passed.stdout
    )
    missing = selfcheck({**good, "COMPLETION_HOOK": "app.two_arguments"})
    assert missing.returncode == EXIT_FAILED
    assert check_lines(missing.stderr) == [
        "selfcheck: completion hook: CompletionHookMissing: COMPLETION_HOOK=app.two_arguments: no"
        " function app.two_arguments(uuid, text, jsonb) in the database (create it, fix the name"
        " or its argument types, or unset COMPLETION_HOOK)"
    ]
