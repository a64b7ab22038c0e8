"""One contract for both producers: every scenario runs against `JobClient` (asyncpg, aioboto3)
and `SyncJobClient` (psycopg, boto3) on the real stack (PostgreSQL with the NOTIFY trigger, moto,
a real worker where a job must run)."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import asyncpg
import boto3
import pytest

from api_client import (
    CancelOutcome,
    ClientConfigError,
    JobClient,
    JobNotFound,
    JobStatus,
    JobWaitTimeout,
    NewJob,
    Recipe,
    RecipeError,
)
from api_client.sync_client import SyncJobClient
from jobcore.jobs import Job, encode_message
from tests.conftest import Aws, StartWorker
from tests.helpers import (
    capture_logs,
    drain,
    eventually,
    insert_job,
    missing_queue_url,
    settings_for,
    synthetic_scene,
)


class Producer:
    """Either client behind one awaitable call: `await p.call("create_job", ...)`."""

    def __init__(self, client: JobClient | SyncJobClient) -> None:
        self.client = client
        self.is_async = isinstance(client, JobClient)

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.client, name)
        if self.is_async:
            return await method(*args, **kwargs)
        return await asyncio.to_thread(method, *args, **kwargs)

    def listen(self, **kwargs: Any) -> Listener:
        return Listener(self.client.listen(**kwargs))


class Listener:
    """`await listener.next()` on an async iterator or a blocking generator (on a thread)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    async def next(self) -> Job:
        if hasattr(self.source, "__anext__"):
            job: Job = await self.source.__anext__()
            return job
        return await asyncio.to_thread(next, self.source)

    async def close(self) -> None:
        if hasattr(self.source, "aclose"):
            await self.source.aclose()
        else:
            await asyncio.to_thread(self.source.close)


# The whole contract on the sync client too in `make test`; the fast lane runs it on the async
# client (test_producer_sync.py keeps the sync client's own cases fast).
@pytest.fixture(params=["async", pytest.param("sync", marks=pytest.mark.slow)])
def make_producer(
    request: pytest.FixtureRequest, database_url: str, aws: Aws
) -> Callable[..., Any]:
    """`async with make_producer(**settings_changes) as p:` a Producer of the parametrised kind."""

    @asynccontextmanager
    async def make(**changes: Any) -> AsyncIterator[Producer]:
        settings = settings_for(database_url, aws, **changes)
        if request.param == "async":
            async with JobClient.connect(settings) as client:
                yield Producer(client)
        else:
            with SyncJobClient.connect(settings) as sync_client:
                yield Producer(sync_client)

    return make


@pytest.fixture
async def p(make_producer: Callable[..., Any]) -> AsyncIterator[Producer]:
    async with make_producer() as producer:
        yield producer


async def finish(
    db: asyncpg.Pool, job_id: uuid.UUID, status: str = "completed", **cols: Any
) -> None:
    """What a worker's completion writes (the NOTIFY trigger fires on it)."""
    await db.execute(
        """UPDATE image_processing_jobs
              SET status = $2, updated_at = now(), completed_at = now(),
                  result_bucket = $3, result_key = $4, outputs = $5::jsonb
            WHERE id = $1""",
        job_id,
        status,
        cols.get("result_bucket", "b" if status == "completed" else None),
        cols.get("result_key", "cutouts/x.png" if status == "completed" else None),
        json.dumps(cols["outputs"]) if "outputs" in cols else None,
    )


async def terminate_listeners(db: asyncpg.Pool) -> int:
    """Kill every backend that LISTENs (a dropped connection, as a restart or network cut)."""
    return int(
        await db.fetchval(
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                WHERE query ILIKE 'LISTEN %' AND pid <> pg_backend_pid()"""
        )
    )


# -- creating: recipes, book ids, argument errors, state after the send ----------------------------


async def test_create_with_a_recipe_and_an_int_book_id(
    p: Producer, db: asyncpg.Pool, aws: Aws
) -> None:
    recipe = Recipe(model="u2net", fallback_model="isnet-general-use", matting=True,
                    background="auto", format="jpeg", thumbnails=(300,))  # fmt: skip
    job = await p.call("create_job", "sources/a.jpg", book_id=42, recipe=recipe)
    assert (job.status, job.book_id, job.recipe) == (JobStatus.PENDING, "42", recipe)
    stored = await db.fetchrow("SELECT book_id, recipe FROM image_processing_jobs")
    assert stored["book_id"] == "42"
    assert Recipe.from_json(stored["recipe"]) == recipe
    many = await p.call(
        "create_jobs", [NewJob("sources/b.jpg", book_id=7, recipe={"format": "webp"}), "c.jpg"]
    )
    assert [(j.book_id, j.recipe) for j in many] == [("7", Recipe(format="webp")), (None, None)]
    primary = await p.call(
        "create_primary_image_job", 9, ["books/9/0.jpg"], recipe=Recipe(trim=True, padding=4)
    )
    assert primary.job.book_id == "9"
    assert primary.job.recipe == Recipe(trim=True, padding=4)
    assert sorted(await drain(aws)) == sorted([job.id, *(j.id for j in many), primary.job.id])
    assert [j.id for j in await p.call("list_jobs", book_id=42)] == [job.id]


@pytest.mark.parametrize(
    ("call", "args", "kwargs", "named"),
    [
        ("create_job", ["a.jpg"], {"book_id": [1]}, "book_id"),
        ("create_job", ["a.jpg"], {"book_id": True}, "book_id"),
        ("create_job", [""], {}, "source_key"),
        ("create_job", ["a.jpg"], {"delay_seconds": -1}, "delay_seconds"),
        ("create_job", ["a.jpg"], {"job_id": "nope"}, "job_id"),
        ("create_job", ["a.jpg"], {"recipe": "png"}, "recipe"),
        ("create_primary_image_job", [None, ["a.jpg"]], {}, "book_id"),
        ("create_primary_image_job", ["b", "a.jpg"], {}, "images"),
        ("get_job", ["not-a-uuid"], {}, "job_id"),
        ("list_jobs", [], {"limit": -1}, "limit"),
        ("list_jobs", [], {"status": "done"}, "status"),
        ("list_jobs", [], {"older_than": 5}, "older_than"),
        ("wait_for_job", [uuid.uuid4()], {"timeout": 0}, "timeout"),
        ("wait_for_job", [uuid.uuid4()], {"interval": -1}, "interval"),
        ("retry_queue_failed", [], {"limit": 0}, "limit"),
        ("retry_failed", [["x"]], {}, "job_ids"),
        ("cancel_job", ["x"], {}, "job_id"),
        ("delete_jobs", [], {}, "book_id or ids"),
        ("delete_jobs", [], {"ids": "abc"}, "ids"),
        ("result_url", [uuid.uuid4()], {"expires_in": 0}, "expires_in"),
        ("upload_source", ["", b"x"], {}, "key"),
    ],
)
async def test_every_argument_error_names_its_argument(
    p: Producer, call: str, args: list[Any], kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(ClientConfigError, match=named):
        await p.call(call, *args, **kwargs)


async def test_a_bad_recipe_names_its_field(p: Producer, db: asyncpg.Pool) -> None:
    with pytest.raises(RecipeError, match=r"recipe\.format") as caught:
        await p.call("create_job", "a.jpg", recipe={"format": "jpeg"})  # transparent jpeg
    assert caught.value.field == "format"
    assert await db.fetchval("SELECT count(*) FROM image_processing_jobs") == 0


async def test_a_failed_send_is_logged_never_printed(
    make_producer: Callable[..., Any],
    aws: Aws,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with make_producer(queue_url=missing_queue_url(aws)) as broken:
        with capture_logs(caplog) as logs:
            job = await broken.call("create_job", "sources/a.jpg")
    assert job.status is JobStatus.QUEUE_FAILED
    assert [r.name for r in logs.records if r.levelno == logging.ERROR] == ["image_worker.producer"]
    assert capsys.readouterr() == ("", "")


# -- hearing back: wait_for_job and listen() by LISTEN ---------------------------------------------


async def test_wait_for_job_hears_the_finish_without_polling(p: Producer, db: asyncpg.Pool) -> None:
    job = await p.call("create_job", "sources/a.jpg")
    waiting = asyncio.create_task(p.call("wait_for_job", job.id, timeout=60, interval=3600))
    await eventually(lambda: _listening(db), timeout=30, interval=0.05)
    await finish(db, job.id)
    done = await asyncio.wait_for(waiting, timeout=30)  # polling every hour could not do this
    assert (done.id, done.status) == (job.id, JobStatus.COMPLETED)
    await eventually(lambda: _none_listening(db), timeout=30)  # its LISTEN connection closed


async def _none_listening(db: asyncpg.Pool) -> bool:
    return not await _listening(db)


async def _listening(db: asyncpg.Pool) -> bool:
    count = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN %' AND state = 'idle'"
    )
    return bool(count)


async def test_wait_for_job_polls_only_when_the_listening_connection_drops(
    p: Producer, db: asyncpg.Pool
) -> None:
    job = await p.call("create_job", "sources/a.jpg")
    waiting = asyncio.create_task(p.call("wait_for_job", job.id, timeout=60, interval=0.05))
    await eventually(lambda: _listening(db), timeout=30, interval=0.05)
    assert await terminate_listeners(db) == 1
    await finish(db, job.id, "failed")
    done = await asyncio.wait_for(waiting, timeout=30)
    assert done.status is JobStatus.FAILED


async def test_wait_for_job_bounds(p: Producer) -> None:
    with pytest.raises(JobNotFound):
        await p.call("wait_for_job", uuid.uuid4(), timeout=5)
    job = await p.call("create_job", "sources/a.jpg")
    with pytest.raises(JobWaitTimeout) as caught:
        await p.call("wait_for_job", job.id, timeout=0.2)
    assert caught.value.job.status is JobStatus.PENDING


async def test_listen_yields_finished_jobs_and_catches_up_after_a_reconnect(
    p: Producer, db: asyncpg.Pool
) -> None:
    one, two, three, other = await p.call(
        "create_jobs", [NewJob(f"{n}.jpg", book_id="b") for n in range(3)] + [NewJob("o.jpg")]
    )
    listener = p.listen(book_id="b")
    try:
        first = asyncio.create_task(listener.next())
        await eventually(lambda: _listening(db), timeout=30, interval=0.05)
        await finish(db, other.id)  # another book's: not yielded
        await finish(db, one.id)
        assert (await asyncio.wait_for(first, 30)).id == one.id
        assert await terminate_listeners(db) == 1
        await finish(db, two.id, "failed")  # while no connection listens
        caught_up = await asyncio.wait_for(listener.next(), 60)
        assert (caught_up.id, caught_up.status) == (two.id, JobStatus.FAILED)
        await eventually(lambda: _listening(db), timeout=30, interval=0.05)
        await p.call("cancel_job", three.id)  # cancelled counts as finished
        last = await asyncio.wait_for(listener.next(), 30)
        assert (last.id, last.status) == (three.id, JobStatus.CANCELLED)
    finally:
        await listener.close()
    await eventually(lambda: _none_listening(db), timeout=30)  # stopping it closes the connection


# -- cancel and purge ------------------------------------------------------------------------------


async def test_cancel_each_state_and_retry_never_revives(
    p: Producer, db: asyncpg.Pool, aws: Aws
) -> None:
    pending = await p.call("create_job", "a.jpg")
    running = await insert_job(db, "processing")
    done = await insert_job(db, "completed")
    cancelled = await p.call("cancel_job", pending.id, "book deleted")
    assert cancelled.outcome is CancelOutcome.CANCELLED
    assert (cancelled.job.status, cancelled.job.error) == (JobStatus.CANCELLED, "book deleted")
    requested = await p.call("cancel_job", running)
    assert requested.outcome is CancelOutcome.REQUESTED
    assert requested.job.status is JobStatus.PROCESSING
    assert await db.fetchval(
        "SELECT cancel_requested_at IS NOT NULL FROM image_processing_jobs WHERE id = $1", running
    )
    assert (await p.call("cancel_job", done)).outcome is CancelOutcome.ALREADY_FINISHED
    assert (await p.call("cancel_job", uuid.uuid4())).outcome is CancelOutcome.NOT_FOUND

    retried = await p.call("retry_failed", [pending.id])
    assert retried.skipped == {pending.id: "status is cancelled, not failed"}
    assert (await p.call("retry_failed", None)).sent == []
    assert (await p.call("get_job", pending.id)).status is JobStatus.CANCELLED


async def test_delete_jobs_removes_rows_and_objects_and_cancels_running_ones(
    p: Producer, db: asyncpg.Pool, aws: Aws
) -> None:
    done = await p.call("create_job", "sources/done.jpg", book_id=5)
    keys = [f"cutouts/{done.id}.png", f"cutouts/{done.id}-thumb-300.jpg"]
    for key in keys:
        await aws.put(key, b"data")
    outputs = [
        {"name": "image", "bucket": aws.bucket, "key": keys[0]},
        {"name": "thumb-300", "bucket": aws.bucket, "key": keys[1]},
    ]
    await finish(db, done.id, result_bucket=aws.bucket, result_key=keys[0], outputs=outputs)
    waiting = await p.call("create_job", "sources/waiting.jpg", book_id=5)
    running = await p.call("create_job", "sources/running.jpg", book_id=5)
    await db.execute("UPDATE image_processing_jobs SET status = 'processing' WHERE id = $1",
                     running.id)  # fmt: skip
    kept = await p.call("create_job", "sources/other.jpg", book_id=6)

    result = await p.call("delete_jobs", book_id=5)
    assert sorted(result.deleted) == sorted([done.id, waiting.id])
    assert sorted(result.objects_deleted) == sorted(f"s3://{aws.bucket}/{k}" for k in keys)
    assert result.cancel_requested == [running.id]
    assert await aws.keys("cutouts/") == []
    left = {
        r["id"]: r["status"] for r in await db.fetch("SELECT id, status FROM image_processing_jobs")
    }
    assert left == {running.id: "processing", kept.id: "pending"}

    await finish(db, running.id, "cancelled")  # its worker stops it, leaving no object
    again = await p.call("delete_jobs", ids=[running.id])
    assert again.deleted == [running.id]
    assert await p.call("get_job", running.id) is None


# -- results ---------------------------------------------------------------------------------------


async def test_result_url_presigns_each_output_by_name(
    p: Producer, db: asyncpg.Pool, aws: Aws
) -> None:
    job = await p.call("create_job", "sources/a.jpg")
    await aws.put("cutouts/a.png", b"main")
    await aws.put("cutouts/a-thumb-300.jpg", b"thumb")
    outputs = [
        {"name": "image", "bucket": aws.bucket, "key": "cutouts/a.png"},
        {"name": "thumb-300", "bucket": aws.bucket, "key": "cutouts/a-thumb-300.jpg"},
    ]
    await finish(db, job.id, result_bucket=aws.bucket, result_key="cutouts/a.png", outputs=outputs)
    done = await p.call("get_job", job.id)
    assert await _get(await p.call("result_url", done)) == b"main"
    assert await _get(await p.call("result_url", job.id, "thumb-300", expires_in=60)) == b"thumb"
    with pytest.raises(ClientConfigError, match=r"output: .* no output 'thumb-600'"):
        await p.call("result_url", done, "thumb-600")

    legacy = await insert_job(db, "completed")  # a row from before outputs were recorded
    await db.execute(
        "UPDATE image_processing_jobs SET result_bucket = $2 WHERE id = $1", legacy, aws.bucket
    )
    await aws.put("cutouts/x.png", b"old")
    assert await _get(await p.call("result_url", legacy)) == b"old"
    with pytest.raises(JobNotFound):
        await p.call("result_url", uuid.uuid4())


async def _get(url: str) -> bytes:
    def fetch() -> bytes:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - moto's URL
            data: bytes = response.read()
            return data

    return await asyncio.to_thread(fetch)


# -- repairs, numbers, recovery, health ------------------------------------------------------------


async def test_repairs_stats_and_sweep(p: Producer, db: asyncpg.Pool, aws: Aws) -> None:
    unsent = await insert_job(db, "queue_failed", age=timedelta(minutes=5))
    failed = await insert_job(db, "failed", error="gave up")
    stats = await p.call("stats")
    assert (stats.counts["queue_failed"], stats.counts["failed"]) == (1, 1)
    assert (await p.call("retry_queue_failed")).sent == [unsent]
    assert [j.id for j in await p.call("list_jobs", status=["failed"])] == [failed]
    await aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody=encode_message(failed))
    redriven = await p.call("redrive_dlq")
    assert (redriven.moved, redriven.reset) == (1, [failed])
    assert (await p.call("dlq_url")) == aws.dlq_url
    assert sorted(await drain(aws)) == sorted([unsent, failed])
    stale = await insert_job(db, "queue_failed")
    await db.execute("UPDATE image_processing_jobs SET updated_at = now() - interval '2 minutes'"
                     " WHERE id = $1", stale)  # fmt: skip
    report = await p.call("sweep")
    assert report.queue_failed_sent == [stale]
    assert report.backlog.queue_failed == 0


async def test_health_reports_pending_age_and_the_ecs_service(
    make_producer: Callable[..., Any], db: asyncpg.Pool, aws: Aws
) -> None:
    ecs = boto3.client("ecs", endpoint_url=aws.endpoint, region_name="us-east-1")
    cluster = f"workers-{uuid.uuid4().hex[:6]}"
    ecs.create_cluster(clusterName=cluster)
    ecs.register_task_definition(
        family="worker", containerDefinitions=[{"name": "w", "image": "w", "memory": 512}]
    )
    ecs.create_service(cluster=cluster, serviceName="worker", taskDefinition="worker",
                       desiredCount=2)  # fmt: skip
    await insert_job(db, "pending", age=timedelta(minutes=3))
    async with make_producer(ecs_cluster=cluster, ecs_service="worker", dlq_url=aws.dlq_url) as p:
        report = await p.call("check_health", timeout=10)
    assert report.ok, report.to_dict()
    assert [c.name for c in report.checks] == [
        "database", "queue", "dlq", "source_bucket", "pending", "workers"
    ]  # fmt: skip
    assert report.oldest_pending_age_seconds >= 180
    assert (report.workers.status, report.workers.desired) == ("ACTIVE", 2)
    assert report.to_dict()["workers"]["desired"] == 2
    async with make_producer(ecs_cluster=cluster, ecs_service="gone") as p:
        missing = await p.call("check_health", timeout=10)
    workers = next(c for c in missing.checks if c.name == "workers")
    assert not workers.ok
    assert "no ECS service gone" in workers.detail
    ecs.close()


# -- a real worker ---------------------------------------------------------------------------------


async def test_a_job_runs_on_a_real_worker_and_its_result_is_fetched(
    p: Producer, aws: Aws, start_worker: StartWorker
) -> None:
    await start_worker()
    scene, _ = synthetic_scene(seed=5)
    await p.call("upload_source", "sources/scene.jpg", scene)
    job = await p.call("create_job", "sources/scene.jpg", book_id=1)
    done = await p.call("wait_for_job", job.id, timeout=120)
    assert done.status is JobStatus.COMPLETED, done.error
    image = await _get(await p.call("result_url", done))
    assert image.startswith(b"\x89PNG")
