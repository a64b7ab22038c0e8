"""The embedded local stack: moto's server for SQS and S3 on a loopback port, PostgreSQL from
DATABASE_URL (or 127.0.0.1:5432, or an embedded `pgserver`), the queue with its DLQ and a bucket.
Used by `make dev` (`python -m devstack`), the test suite and the benchmark."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import aioboto3
import asyncpg
import skimage
import structlog
from moto.server import ThreadedMotoServer

from worker.migrate import migrate_url

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

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
    sqs: SQSClient, name: str, *, max_receive_count: int, visibility: int = 60
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
    # Imported only when needed: importing pgserver warns where XDG_RUNTIME_DIR is unset.
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
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def provision(
    admin_url: str, endpoint: str, *, database: str, queue: str, bucket: str
) -> tuple[str, QueuePair]:
    """A fresh migrated database, a queue with its DLQ, and a bucket; the database URL."""
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
    folder = Path(skimage.__file__).parent / "data"
    return [folder / name for name in SAMPLE_PHOTOS if (folder / name).is_file()]
