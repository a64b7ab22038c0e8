"""The FastAPI example (examples/fastapi_app) run for real: uvicorn as a subprocess on a loopback
port against PostgreSQL and moto's server, an HTTP client calling it, a real worker with the
u2netp model, and the recovery sweep as the scheduler runs it (`image-jobs sweep`). The import
flow end to end: a failed first copy, a retried request, a queue outage during an import, and the
admin health endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from jobcore.jobs import decode_message
from tests.conftest import Aws, StartWorker
from tests.faults import FaultProxy
from tests.helpers import eventually, png_alpha, synthetic_scene, unused_port

pytestmark = pytest.mark.slow  # uvicorn, a worker and the sweep as subprocesses

REPO = Path(__file__).resolve().parents[1]
IMAGE_JOBS = Path(sys.executable).parent / "image-jobs"


def app_env(database_url: str, aws: Aws, *, sqs_endpoint: str | None = None) -> dict[str, str]:
    """The app's settings; SQS and S3 endpoints set apart (botocore's per-service variables) so
    that a test can cut the queue alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    return env | {
        "DATABASE_URL": database_url,
        "SQS_QUEUE_URL": aws.queue_url,
        "SOURCE_BUCKET": aws.bucket,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": aws.endpoint,
        "AWS_ENDPOINT_URL_SQS": sqs_endpoint or aws.endpoint,
        "AWS_MAX_ATTEMPTS": "1",
        "CLIENT_CONNECT_TIMEOUT_SECONDS": "2",
    }


class ExampleApp:
    """`uvicorn examples.fastapi_app.app:app` in a subprocess on a free loopback port; its output
    goes to a file."""

    def __init__(self, process: asyncio.subprocess.Process, url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path
        self.http = httpx.AsyncClient(base_url=url, timeout=30)

    @classmethod
    async def launch(cls, env: dict[str, str], log_path: Path) -> ExampleApp:
        port = unused_port()
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "uvicorn",
                "examples.fastapi_app.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        return cls(process, f"http://127.0.0.1:{port}", log_path)

    async def ready(self, timeout: float = 120) -> httpx.AsyncClient:
        """Wait until it answers (its lifespan has opened the JobClient by then)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.returncode is not None:
                raise AssertionError(f"the app exited:\n{self.output()}")
            try:
                await self.http.get("/openapi.json")
                return self.http
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the app did not answer:\n{self.output()}") from None
                await asyncio.sleep(0.2)

    async def stop(self) -> bool:
        """SIGTERM, as a process manager stops it; whether the app shut down cleanly (its lifespan
        closed the JobClient). Uvicorn re-raises the signal once it is done, hence -SIGTERM."""
        await self.http.aclose()
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout=30)
        return code in (0, -signal.SIGTERM) and "Application shutdown complete" in self.output()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


LaunchApp = Callable[[dict[str, str]], Awaitable[ExampleApp]]


@pytest.fixture
async def launch_app(tmp_path: Path) -> AsyncIterator[LaunchApp]:
    apps: list[ExampleApp] = []

    async def launch(env: dict[str, str]) -> ExampleApp:
        app = await ExampleApp.launch(env, tmp_path / f"app-{len(apps)}.log")
        apps.append(app)
        return app

    yield launch
    for app in apps:
        if app.process.returncode is None:
            await app.stop()


def listing(aws: Aws, book_id: str, *keys: str) -> dict[str, Any]:
    return {
        "book_id": book_id,
        "title": f"Book {book_id}",
        "photos": [{"bucket": aws.bucket, "key": key} for key in keys],
    }


async def job_rows(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT id, status, idempotency_key FROM image_processing_jobs"))


async def finished(http: httpx.AsyncClient, job_id: str, timeout: float = 120) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        job: dict[str, Any] = (await http.get(f"/jobs/{job_id}")).raise_for_status().json()
        return job if job["status"] in ("completed", "failed") else None

    return await eventually(probe, timeout=timeout, interval=0.25)


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
    assert "NoSuchKey" in front["error"]
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
    book = await db.fetchrow("SELECT title, photo_keys FROM example_books WHERE book_id = 'b1'")
    assert dict(book) == {"title": "Book b1", "photo_keys": ["books/b1/1.jpg"]}

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
    assert await db.fetchval("SELECT array_agg(book_id) FROM example_books") == ["b2"]
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
