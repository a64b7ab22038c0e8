"""The embedded local stack: moto's server for SQS and S3 on a loopback port, PostgreSQL from
DATABASE_URL (or 127.0.0.1:5432, or an embedded `pgserver`), the queue with its DLQ and a bucket.
Used by `image-worker dev` and by the test suite."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger(__name__)

LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
SAMPLE_PHOTOS = ("coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto on a free loopback port; yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    for name, value in FAKE_CREDENTIALS.items():
        os.environ.setdefault(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass(frozen=True, slots=True)
class QueuePair:
    queue_url: str
    dlq_url: str
    dlq_arn: str


async def create_queue_pair(
    sqs: Any, name: str, *, max_receive_count: int, visibility: int = 60
) -> QueuePair:
    dlq_url = (await sqs.create_queue(QueueName=f"{name}-dlq"))["QueueUrl"]
    attributes = await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    dlq_arn = attributes["Attributes"]["QueueArn"]
    queue_url = (
        await sqs.create_queue(
            QueueName=name,
            Attributes={
                "VisibilityTimeout": str(visibility),
                "ReceiveMessageWaitTimeSeconds": "20",
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
                ),
            },
        )
    )["QueueUrl"]
    return QueuePair(queue_url, dlq_url, dlq_arn)


async def database_answers(url: str) -> bool:
    try:
        connection = await asyncpg.connect(url, timeout=2.0)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await connection.close()
    return True


@contextmanager
def postgres_server() -> Iterator[str]:
    """An admin URL for a PostgreSQL server: DATABASE_URL, the local one, or an embedded one."""
    candidates = [url for url in (os.environ.get("DATABASE_URL"), LOCAL_POSTGRES_URL) if url]
    for url in candidates:
        if asyncio.run(database_answers(url)):
            yield url
            return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="image-worker-pg-") as data_dir:
        log.info("no PostgreSQL answers; starting an embedded one", pgdata=data_dir)
        server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


async def recreate_database(admin_url: str, name: str, *, template: str | None = None) -> str:
    """Drop and create `name` on the server of `admin_url`; return its URL."""
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        clause = f' TEMPLATE "{template}"' if template else ""
        await connection.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await connection.close()
    return database_url_for(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def database_url_for(admin_url: str, name: str) -> str:
    """Swap the database name in a URL, keeping host, user and query (socket paths)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def provision(
    admin_url: str, endpoint: str, *, database: str, queue: str, bucket: str
) -> tuple[str, QueuePair]:
    """A fresh migrated database, a queue with its DLQ, and a bucket; the database URL."""
    import aioboto3

    from worker.migrate import migrate_url

    database_url = await recreate_database(admin_url, database)
    await migrate_url(database_url)
    session = aioboto3.Session()
    async with (
        session.client("sqs", endpoint_url=endpoint) as sqs,
        session.client("s3", endpoint_url=endpoint) as s3,
    ):
        queues = await create_queue_pair(sqs, queue, max_receive_count=5)
        await s3.create_bucket(Bucket=bucket)
    return database_url, queues


def sample_photos() -> list[Path]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    return [folder / name for name in SAMPLE_PHOTOS if (folder / name).is_file()]


def run_dev(out_dir: Path, *, exit_after_samples: bool = False) -> int:
    from jobcore.log_setup import configure_logging

    configure_logging("console", os.environ.get("LOG_LEVEL", "info"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with postgres_server() as admin_url, moto_server() as endpoint:
        try:
            return asyncio.run(_dev(admin_url, endpoint, out_dir, exit_after_samples))
        except KeyboardInterrupt:
            return 0


async def _dev(admin_url: str, endpoint: str, out_dir: Path, exit_after_samples: bool) -> int:

    from api_client import ClientSettings, JobClient
    from worker.app import WorkerApp
    from worker.cli import install_stop_signals
    from worker.settings import Settings

    database_url, queues = await provision(
        admin_url, endpoint, database="image_worker_dev", queue="image-jobs", bucket="book-photos"
    )
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SQS_QUEUE_URL": queues.queue_url,
        "AWS_ENDPOINT_URL": endpoint,
        "SOURCE_BUCKET": "book-photos",
        "U2NET_HOME": os.environ.get("U2NET_HOME", str(Path.cwd() / ".models")),
        "LOG_FORMAT": "console",
        "METRICS_PORT": os.environ.get("METRICS_PORT", "9100"),
        "MAX_ATTEMPTS": "5",
    }
    settings = Settings.from_env(env)
    app = WorkerApp(settings)
    async with AsyncExitStack() as stack:
        install_stop_signals(app.stop)
        worker_task = asyncio.create_task(app.run(), name="worker")
        stack.push_async_callback(_stop_worker, app, worker_task)
        await _first_done(app.ready.wait(), worker_task)
        if worker_task.done():
            return 1
        client = await stack.enter_async_context(JobClient.connect(ClientSettings.from_env(env)))
        started = time.monotonic()
        jobs = []
        for photo in sample_photos():
            key = f"sources/{photo.name}"
            await client.upload_source(key, photo.read_bytes())
            jobs.append((photo, await client.create_job(key, book_id=photo.stem)))
        for photo, job in jobs:
            finished = await _wait_finished(client, job.id, app)
            if finished is None:
                break
            if finished.status == "completed" and finished.result_key:
                target = out_dir / f"{photo.stem}.png"
                response = await client.require_s3().get_object(
                    Bucket=finished.result_bucket, Key=finished.result_key
                )
                async with response["Body"] as body:
                    target.write_bytes(await body.read())
                print(f"completed  {photo.name:22} -> {target}", flush=True)
            else:
                print(f"{finished.status:10} {photo.name:22} {finished.error}", flush=True)
        elapsed = time.monotonic() - started
        print(f"{len(jobs)} sample jobs in {elapsed:.1f}s on {app.provider}", flush=True)
        print(f"metrics: http://127.0.0.1:{app.port}/metrics", flush=True)
        print("inject more (from another shell):", flush=True)
        print(
            f"  DATABASE_URL='{database_url}' SQS_QUEUE_URL='{queues.queue_url}' "
            f"AWS_ENDPOINT_URL='{endpoint}' SOURCE_BUCKET=book-photos "
            "AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "
            ".venv/bin/image-jobs inject --wait PATH...",
            flush=True,
        )
        if exit_after_samples:
            app.stop.set()
        else:
            print("Ctrl-C to stop.", flush=True)
        await worker_task
    return 0


async def _stop_worker(app: Any, task: asyncio.Task[None]) -> None:
    app.stop.set()
    await asyncio.wait({task})


async def _first_done(waitable: Any, task: asyncio.Task[None]) -> None:
    waiter = asyncio.ensure_future(waitable)
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()


async def _wait_finished(client: Any, job_id: Any, app: Any) -> Any:
    while not app.stop.is_set():
        job = await client.get_job(job_id)
        if job is not None and job.status.finished:
            return job
        await asyncio.sleep(0.2)
    return None
