"""The FastAPI example (examples/fastapi_app) run for real: uvicorn as a subprocess on a loopback
port against PostgreSQL and moto's server, an HTTP client calling it, a real worker with the
u2netp model, and the recovery sweep as the scheduler runs it (`image-jobs sweep`). The import
flow end to end: a failed first copy, a retried request, a queue outage during an import, and the
admin health endpoint."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from examples.fastapi_app.books import ATTACH, attach, book_images, migrate, save_book
from examples.fastapi_app.settings import ExampleConfigError, ExampleSettings
from jobcore.jobs import decode_message
from tests.conftest import Aws, StartWorker
from tests.example_app import (
    LaunchApp,
    app_env,
    finished,
    listing,
)
from tests.example_app import launch_app as launch_app  # the fixture
from tests.faults import FaultProxy
from tests.helpers import eventually, png_alpha, synthetic_scene

pytestmark = pytest.mark.slow  # uvicorn, a worker and the sweep as subprocesses

IMAGE_JOBS = Path(sys.executable).parent / "image-jobs"


async def job_rows(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT id, status, idempotency_key FROM image_processing_jobs"))


async def test_an_import_whose_first_copy_fails_queues_the_second_photo(
    database_url: str, aws: Aws, db: asyncpg.Pool, start_worker: StartWorker, launch_app: LaunchApp
) -> None:
    """The first photo is missing (its copy fails and is reported); the job is for the second,
    and a real worker turns it into a cut-out."""
    photo, _ = synthetic_scene((320, 240), seed=5)
    await aws.put("uploads/b1/back.jpg", photo)
    app = await launch_app(app_env(database_url, aws))
    await start_worker()  # the model loads while uvicorn starts
    http = await app.ready()

    response = await http.post(
        "/books/import",
        json=listing(aws, "b1", "uploads/b1/front.jpg", "uploads/b1/back.jpg"),
        headers={"Idempotency-Key": "import-b1"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    front, back = body["copies"]
    assert front["key"] == "books/b1/0.jpg"
    assert front["error"] == "photo not found"  # generic: S3's error text stays in the log
    assert back == {"source": f"s3://{aws.bucket}/uploads/b1/back.jpg", "key": "books/b1/1.jpg",
                    "error": None}  # fmt: skip
    primary = body["primary"]
    assert (primary["index"], primary["key"], primary["repeat"]) == (1, "books/b1/1.jpg", False)
    assert primary["skipped"] == {"0": front["error"]}
    assert primary["job"]["status"] == "pending"
    assert primary["job"]["idempotency_key"] == "import-b1"

    job = await finished(http, primary["job"]["id"])
    assert job["status"] == "completed", job
    assert job["source"] == f"s3://{aws.bucket}/books/b1/1.jpg"
    assert job["attempts"] == 1
    assert await aws.keys("cutouts/") == [f"cutouts/{job['id']}.png"]
    image, alpha = png_alpha(await aws.get(f"cutouts/{job['id']}.png"))
    assert image.size == (320, 240)
    assert (alpha.min(), alpha.max()) == (0, 255)
    book = (await http.get("/books/b1")).raise_for_status().json()
    # Only the photo that was copied (the listener may have attached the cut-out already).
    (photo_row,) = [image for image in book["images"] if not image["background_removed"]]
    assert photo_row["key"] == "books/b1/1.jpg"

    assert await app.stop(), app.output()


async def test_a_retried_import_returns_the_same_job(
    database_url: str, aws: Aws, db: asyncpg.Pool, launch_app: LaunchApp
) -> None:
    """A client retries while its first request is still running (four at once), and once more
    later: one 201, the rest 200 with the same job; one job row, one message. The same key for
    another book is refused and writes nothing."""
    photo, _ = synthetic_scene((160, 120), seed=6)
    await aws.put("uploads/b2/0.jpg", photo)
    app = await launch_app(app_env(database_url, aws))
    http = await app.ready()
    request = listing(aws, "b2", "uploads/b2/0.jpg")
    key = {"Idempotency-Key": str(uuid.uuid4())}

    at_once = await asyncio.gather(
        *(http.post("/books/import", json=request, headers=key) for _ in range(4))
    )
    later = await http.post("/books/import", json=request, headers=key)
    responses = [*at_once, later]
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 200, 201]
    jobs = {r.json()["primary"]["job"]["id"] for r in responses}
    assert len(jobs) == 1
    assert [r.json()["primary"]["repeat"] for r in responses].count(False) == 1
    assert later.json()["primary"]["job"]["status"] == "pending"
    (row,) = await job_rows(db)
    assert (str(row["id"]), row["status"], row["idempotency_key"]) == (
        *jobs,
        "pending",
        key["Idempotency-Key"],
    )
    assert await aws.queue_counts() == (1, 0)
    assert [str(decode_message(body)) for body in await aws.receive_all()] == list(jobs)

    conflict = await http.post(
        "/books/import", json=listing(aws, "b3", "uploads/b2/0.jpg"), headers=key
    )
    assert conflict.status_code == 409
    assert "already names job" in conflict.json()["detail"]
    assert len(await job_rows(db)) == 1
    assert await db.fetchval("SELECT array_agg(book_id) FROM app.books") == ["b2"]
    assert await aws.queue_counts() == (0, 1)  # only the message received above
    assert await app.stop(), app.output()


async def test_a_queue_outage_during_an_import_is_recovered_by_the_sweep(
    database_url: str, aws: Aws, db: asyncpg.Pool, start_worker: StartWorker, launch_app: LaunchApp,
    tmp_path: Path,
) -> None:  # fmt: skip
    """SQS is cut between the app (and the sweeper) and moto: the import still answers 201 with
    the job `queue_failed`, health turns 503 naming the queue checks; once SQS is back the
    scheduled sweep sends the job and a worker completes it, with nobody calling anything."""
    photo, _ = synthetic_scene((320, 240), seed=7)
    await aws.put("uploads/b4/0.jpg", photo)
    moto = urlsplit(aws.endpoint)
    assert moto.hostname is not None
    assert moto.port is not None
    async with FaultProxy(moto.hostname, moto.port) as proxy:
        through_proxy = f"http://127.0.0.1:{proxy.port}"
        app = await launch_app(app_env(database_url, aws, sqs_endpoint=through_proxy))
        sweep_log = (tmp_path / "sweep.out").open("wb")
        sweeper = await asyncio.create_subprocess_exec(
            str(IMAGE_JOBS),
            "sweep",
            "--loop",
            "--json",
            env=app_env(database_url, aws, sqs_endpoint=through_proxy)
            | {"SWEEP_INTERVAL_SECONDS": "0.5", "SWEEP_GRACE_SECONDS": "1"},
            stdout=sweep_log,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await start_worker()
            http = await app.ready()
            healthy = await http.get("/admin/health")
            assert healthy.status_code == 200, healthy.text
            assert healthy.json()["failed"] == []
            assert {c["name"] for c in healthy.json()["checks"]} == {
                "database", "queue", "dlq", "source_bucket", "pending"
            }  # fmt: skip

            proxy.cut()
            response = await http.post(
                "/books/import",
                json=listing(aws, "b4", "uploads/b4/0.jpg"),
                headers={"Idempotency-Key": "import-b4"},
            )
            assert response.status_code == 201, response.text
            job = response.json()["primary"]["job"]
            assert job["status"] == "queue_failed"
            assert job["error"].startswith("send failed")
            assert f"image_worker.producer: send failed for {job['id']}" in app.output()
            assert "Traceback" in app.output()  # the error is logged with its stack trace

            down = await http.get("/admin/health")
            assert down.status_code == 503
            report = down.json()
            assert (report["ok"], report["failed"]) == (False, ["queue", "dlq"])
            reasons = {c["name"]: c["detail"] for c in report["checks"]}
            assert reasons["queue"]  # why, e.g. "EndpointConnectionError: ..."

            # The sweeper shares the outage: it tries the row once its grace period is over and
            # fails (touching updated_at), so recovery below starts from an outage, not a head
            # start.
            await eventually(
                lambda: db.fetchval(
                    "SELECT updated_at > created_at + interval '1 second' "
                    "FROM image_processing_jobs WHERE id = $1 AND status = 'queue_failed'",
                    uuid.UUID(job["id"]),
                ),
                timeout=60,
            )
            proxy.resume()
            outage_ended = time.monotonic()
            done = await finished(http, job["id"])
            recovered_in = time.monotonic() - outage_ended
            assert (await http.get("/admin/health")).status_code == 200
        finally:
            sweeper.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(sweeper.communicate(), timeout=30)
            sweep_log.close()
    assert sweeper.returncode == 0, stderr.decode()
    assert (done["status"], done["attempts"]) == ("completed", 1), done
    assert await aws.keys("cutouts/") == [f"cutouts/{job['id']}.png"]
    passes = [line for line in (tmp_path / "sweep.out").read_text().splitlines() if line]
    sent = [job_id for one in map(json.loads, passes) for job_id in one["queue_failed_sent"]]
    assert sent == [job["id"]]
    assert await app.stop(), app.output()
    print(f"\nqueue outage end -> the import's job completed: {recovered_in:.2f}s")


# -- the cut-out comes back as the book's new primary image -------------------------------------


async def import_and_finish(
    http: httpx.AsyncClient, aws: Aws, book_id: str, seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Import a book whose first photo is missing; the job (for the second) finishes."""
    photo, _ = synthetic_scene((320, 240), seed=seed)
    await aws.put(f"uploads/{book_id}/back.jpg", photo)
    response = await http.post(
        "/books/import",
        json=listing(aws, book_id, f"uploads/{book_id}/front.jpg", f"uploads/{book_id}/back.jpg"),
    )
    assert response.status_code == 201, response.text
    job = response.json()["primary"]["job"]
    return job, await finished(http, job["id"])


async def new_primary_image(http: httpx.AsyncClient, book_id: str) -> list[dict[str, Any]]:
    async def probe() -> list[dict[str, Any]] | None:
        images: list[dict[str, Any]] = (await http.get(f"/books/{book_id}")).json()["images"]
        return images if images and images[0]["background_removed"] else None

    return await eventually(probe, timeout=60, interval=0.25)


def assert_attached(images: list[dict[str, Any]], job: dict[str, Any]) -> None:
    """The cut-out is the first, primary image, recorded as made by the job; the photo moved
    down."""
    cutout, photo = images
    assert (cutout["position"], cutout["is_primary"], cutout["background_removed"]) == (
        0,
        True,
        True,
    )
    assert cutout["key"] == f"cutouts/{job['id']}.png"
    assert cutout["processed_by_job"] == job["id"]
    assert (photo["key"], photo["position"], photo["is_primary"]) == ("books/b1/1.jpg", 1, False)


async def test_the_listener_attaches_the_cut_out_as_the_new_primary_image(
    database_url: str, aws: Aws, db: asyncpg.Pool, start_worker: StartWorker, launch_app: LaunchApp
) -> None:
    """ATTACH_PROCESSED_IMAGES=listener: the app's lifespan task hears the job finish (NOTIFY,
    no polling in the app) and attaches the cut-out; a second app started later catches up on
    nothing and attaches nothing twice."""
    app = await launch_app(app_env(database_url, aws) | {"ATTACH_PROCESSED_IMAGES": "listener"})
    await start_worker()
    http = await app.ready()
    job, done = await import_and_finish(http, aws, "b1", seed=11)
    assert done["status"] == "completed", done
    assert_attached(await new_primary_image(http, "b1"), job)
    assert "cut-out attached" in app.output()
    assert await app.stop(), app.output()

    again = await launch_app(app_env(database_url, aws))
    http = await again.ready()
    assert len((await http.get("/books/b1")).json()["images"]) == 2
    assert await again.stop(), again.output()


async def test_the_completion_hook_attaches_it_in_the_completing_transaction(
    database_url: str, aws: Aws, db: asyncpg.Pool, start_worker: StartWorker, launch_app: LaunchApp
) -> None:
    """ATTACH_PROCESSED_IMAGES=hook: the app runs no listener; the worker calls
    app.attach_processed_image (the example's schema.sql) inside the transaction that completes
    the job, so the new image exists the moment the job reads `completed`."""
    app = await launch_app(app_env(database_url, aws) | {"ATTACH_PROCESSED_IMAGES": "hook"})
    http = await app.ready()  # its startup created app.attach_processed_image
    await start_worker(COMPLETION_HOOK="app.attach_processed_image")
    job, done = await import_and_finish(http, aws, "b1", seed=12)
    assert done["status"] == "completed", done
    images = (await http.get("/books/b1")).json()["images"]  # no waiting: same transaction
    assert_attached(images, job)
    attached = await db.fetchval(
        "SELECT processed_image_id FROM app.image_jobs WHERE job_id = $1", uuid.UUID(job["id"])
    )
    assert attached == images[0]["id"]
    assert "cut-out attached" not in app.output()
    assert await app.stop(), app.output()


# -- bad input, repairs -------------------------------------------------------------------------


async def test_sources_outside_the_allowed_buckets_are_refused_with_generic_errors(
    database_url: str, aws: Aws, db: asyncpg.Pool, launch_app: LaunchApp
) -> None:
    """Only ALLOWED_SOURCE_BUCKETS (default: SOURCE_BUCKET) are copied from; errors name the
    field, never echo S3's or the database's text."""
    app = await launch_app(app_env(database_url, aws))
    http = await app.ready()
    photos = [{"bucket": "private-bucket", "key": "k.jpg"}]
    elsewhere = {"book_id": "b5", "title": "T", "photos": photos}
    refused = await http.post("/books/import", json=elsewhere)
    assert refused.status_code == 422
    assert refused.json() == {"detail": "photos[0].bucket is not a bucket this API reads from"}
    assert await db.fetchval("SELECT count(*) FROM app.books") == 0

    malformed = await http.post("/books/import", json={"book_id": "no spaces allowed", "title": ""})
    assert malformed.status_code == 422
    fields = {problem["field"] for problem in malformed.json()["detail"]}
    assert fields == {"book_id", "title", "photos"}
    assert "no spaces allowed" not in malformed.text  # the input is not echoed back

    for path in ("/jobs/not-a-uuid", f"/jobs/{uuid.uuid4()}"):
        missing = await http.get(path)
        assert (missing.status_code, missing.json()) == (404, {"detail": "no such job"})
    assert await app.stop(), app.output()


async def test_retry_and_remove_background_again_with_unknown_ids_and_double_clicks(
    database_url: str, aws: Aws, db: asyncpg.Pool, start_worker: StartWorker, launch_app: LaunchApp
) -> None:
    """A photo that is not an image fails; once it is fixed, a retry completes it and a second
    retry (a double click) is refused with a reason. Removing the background again queues one
    new job for the same photo and book, however often it is clicked."""
    await aws.put("uploads/b6/0.jpg", b"not an image at all")
    app = await launch_app(app_env(database_url, aws))
    await start_worker()
    http = await app.ready()
    response = await http.post("/books/import", json=listing(aws, "b6", "uploads/b6/0.jpg"))
    job_id = response.json()["primary"]["job"]["id"]
    failed = await finished(http, job_id)
    assert failed["status"] == "failed", failed

    photo, _ = synthetic_scene((240, 180), seed=13)
    await aws.put("books/b6/0.jpg", photo)  # the operator fixes the copied photo
    first, second = [await http.post(f"/jobs/{job_id}/retry") for _ in range(2)]
    assert (first.status_code, first.json()["detail"]) == (200, f"Job {job_id} is queued again.")
    assert second.status_code == 409
    assert second.json()["detail"].startswith(f"Job {job_id} was not retried: it is ")
    assert (await http.post("/admin/retry-failed")).json() == {
        "detail": "0 failed job(s) queued again."
    }
    done = await finished(http, job_id)
    assert done["status"] == "completed", done

    unknown = str(uuid.uuid4())
    for path, status, text in (
        (f"/jobs/{unknown}/remove-background", 404, f"There is no job {unknown}."),
        ("/jobs/nope/remove-background", 404, "'nope' is not a job id."),
    ):
        answer = await http.post(path)
        assert (answer.status_code, answer.json()["detail"]) == (status, text)

    clicks = [await http.post(f"/jobs/{job_id}/remove-background") for _ in range(2)]
    assert [c.status_code for c in clicks] == [201, 409]
    new_job = clicks[0].json()["job"]
    assert clicks[1].json()["job"]["id"] == new_job["id"]
    assert "already being removed again" in clicks[1].json()["detail"]
    assert (new_job["book_id"], new_job["source"]) == ("b6", done["source"])
    redone = await finished(http, new_job["id"])
    assert redone["status"] == "completed", redone
    recorded = await db.fetchval("SELECT count(*) FROM app.image_jobs WHERE book_id = 'b6'")
    assert recorded == 2
    sweep = await http.post("/admin/sweep")
    assert sweep.status_code == 200
    assert sweep.json()["detail"].startswith("Recovery sweep: 0 unsent job(s) sent")
    assert await app.stop(), app.output()


async def test_cancel_an_open_job_and_a_finished_one(
    database_url: str, aws: Aws, db: asyncpg.Pool, launch_app: LaunchApp
) -> None:
    """No worker runs: the job stays pending and is cancelled at once; a second cancel (double
    click) says it is already cancelled; an unknown id is a 404 with a sentence."""
    photo, _ = synthetic_scene((160, 120), seed=14)
    await aws.put("uploads/b7/0.jpg", photo)
    app = await launch_app(app_env(database_url, aws))
    http = await app.ready()
    response = await http.post("/books/import", json=listing(aws, "b7", "uploads/b7/0.jpg"))
    job_id = response.json()["primary"]["job"]["id"]
    first, second = [await http.post(f"/jobs/{job_id}/cancel") for _ in range(2)]
    assert (first.status_code, first.json()["job"]["status"]) == (200, "cancelled")
    assert (second.status_code, second.json()["detail"]) == (
        409, f"Job {job_id} is already cancelled: nothing to cancel."
    )  # fmt: skip
    unknown = await http.post(f"/jobs/{uuid.uuid4()}/cancel")
    assert unknown.status_code == 404
    again = await http.post(f"/jobs/{job_id}/remove-background")
    assert again.status_code == 201  # a cancelled job's photo can be processed again
    assert await app.stop(), app.output()


def test_the_example_settings_name_a_bad_variable() -> None:
    with pytest.raises(ExampleConfigError, match="ATTACH_PROCESSED_IMAGES='both'"):
        ExampleSettings.from_env({"ATTACH_PROCESSED_IMAGES": "both"}, "photos")
    default = ExampleSettings.from_env({}, "photos")
    assert (default.attach, set(default.allowed_source_buckets)) == ("listener", {"photos"})
    listed = ExampleSettings.from_env(
        {"ATTACH_PROCESSED_IMAGES": " Hook ", "ALLOWED_SOURCE_BUCKETS": "uploads, scans,"}, "photos"
    )
    assert (listed.attach, set(listed.allowed_source_buckets)) == ("hook", {"uploads", "scans"})


async def test_attach_processed_image_renumbers_once_and_ignores_other_jobs(
    db: asyncpg.Pool,
) -> None:
    """The SQL function both paths call, on its own: the cut-out becomes position 0 and primary,
    the photos move down, the job records the new image; a second call, a job of another app or
    an unknown book change nothing; a job without an "image" output raises (the hook's attempt
    fails as transient, the listener logs it)."""
    await migrate(db)
    await migrate(db)  # idempotent: every app start runs it
    async with db.acquire() as connection:
        photos = await save_book(
            connection, "b9", "T", "photos", ["books/b9/0.jpg", "books/b9/1.jpg"]
        )
    job_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO app.image_jobs (job_id, book_id, source_image_id) VALUES ($1, 'b9', $2)",
        job_id,
        photos["books/b9/0.jpg"],
    )
    outputs = json.dumps([
        {"name": "thumb-300", "bucket": "photos", "key": f"cutouts/{job_id}-300.jpg"},
        {"name": "image", "bucket": "photos", "key": f"cutouts/{job_id}.png"},
    ])  # fmt: skip
    for _ in range(2):
        await attach(db, job_id, "b9", outputs)
    await attach(db, uuid.uuid4(), "b9", outputs)  # not this app's job
    await attach(db, job_id, "no-such-book", outputs)

    images = await book_images(db, "b9")
    assert images is not None
    assert [
        (i["key"], i["position"], i["is_primary"], i["background_removed"]) for i in images
    ] == [
        (f"cutouts/{job_id}.png", 0, True, True),
        ("books/b9/0.jpg", 1, False, False),
        ("books/b9/1.jpg", 2, False, False),
    ]
    assert images[0]["processed_by_job"] == str(job_id)

    other = uuid.uuid4()
    await db.execute("INSERT INTO app.image_jobs (job_id, book_id) VALUES ($1, 'b9')", other)
    # Who may call it: the worker's group role (SECURITY DEFINER: no rights on app.* needed),
    # not the producer's.
    function = await db.fetchval(
        "SELECT 'app.attach_processed_image(uuid, text, jsonb)'::regprocedure::oid"
    )
    async with db.acquire() as connection:
        for role, allowed in (("image_worker", True), ("image_producer", False)):
            await connection.execute(f"SET ROLE {role}")
            try:
                privilege = "SELECT has_function_privilege($1::oid, 'EXECUTE')"
                assert await connection.fetchval(privilege, function) is allowed
            finally:
                await connection.execute("RESET ROLE")
        await connection.execute("SET ROLE image_worker")
        try:
            await connection.execute(ATTACH, uuid.uuid4(), "b9", outputs)  # not this app's: no-op
        finally:
            await connection.execute("RESET ROLE")
    with pytest.raises(asyncpg.RaiseError, match='has no "image" output'):
        await attach(
            db, other, "b9", json.dumps([{"name": "thumb-300", "bucket": "b", "key": "k"}])
        )
    with pytest.raises(asyncpg.RaiseError, match='has no "image" output'):
        await attach(db, other, "b9", "null")


async def test_the_admin_page_shows_a_row_without_a_cut_out_and_answers_bad_ids(
    database_url: str, aws: Aws, db: asyncpg.Pool, launch_app: LaunchApp
) -> None:
    """A completed row that records no "image" output still renders (no picture, no 500); a
    form posted with a malformed id comes back to the page with a sentence."""
    odd = uuid.uuid4()
    await db.execute(
        """INSERT INTO image_processing_jobs (id, source_bucket, source_key, status, attempts,
                                              result_bucket, result_key, outputs, completed_at)
           VALUES ($1, $2, 'sources/x.jpg', 'completed', 1, $2, 'cutouts/x.jpg',
                   '[{"name": "thumb-300", "bucket": "b", "key": "k.jpg"}]', now())""",
        odd,
        aws.bucket,
    )
    app = await launch_app(app_env(database_url, aws))
    http = await app.ready()
    page = await http.get("/admin")
    assert page.status_code == 200, page.text
    assert f'id="job-{odd}" data-job-id="{odd}" data-status="completed"' in page.text
    assert "no cut-out" in page.text
    posted = await http.post("/admin/actions/jobs/<script>/retry", follow_redirects=True)
    assert posted.status_code == 200
    assert "&#39;&lt;script&gt;&#39; is not a job id." in posted.text  # escaped, never raw
    assert "no cut-out to show" in app.output()
    assert await app.stop(), app.output()
