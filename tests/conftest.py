"""Shared fixtures: a real PostgreSQL (local server or embedded pgserver) with one template
database per session and a fresh copy per test; moto's server on loopback with a queue, DLQ and
bucket per test; real workers running the real u2netp model in-process."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aioboto3
import aiohttp
import asyncpg
import pytest

from api_client.client import ClientSettings, JobClient
from devstack.stack import (
    FAKE_CREDENTIALS,
    create_queue_pair,
    drop_database,
    moto_server,
    postgres_server,
    recreate_database,
)
from tests.faults import FaultProxy
from tests.helpers import eventually, scrape, unused_port
from worker.app import WorkerApp
from worker.migrate import migrate_url
from worker.settings import Settings
from worker.weights import ModelUnavailable, verify_model

REPO = Path(__file__).resolve().parents[1]
MODEL_HOME = Path(os.environ.get("U2NET_HOME", str(REPO / ".models")))

for _name, _value in FAKE_CREDENTIALS.items():
    os.environ.setdefault(_name, _value)


@pytest.fixture(scope="session")
def model_home() -> Path:
    try:
        verify_model(MODEL_HOME, "u2netp")
    except ModelUnavailable as exc:
        pytest.fail(f"{exc} (`make test` fetches it)")
    return MODEL_HOME


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
async def template_database(pg_admin_url: str) -> AsyncIterator[str]:
    """Migrated once; every test database is a cheap copy of it (CREATE DATABASE ... TEMPLATE)."""
    name = f"iw_template_{os.getpid()}"
    await migrate_url(await recreate_database(pg_admin_url, name))
    yield name
    await drop_database(pg_admin_url, name)


@pytest.fixture
async def database_url(pg_admin_url: str, template_database: str) -> AsyncIterator[str]:
    name = f"iw_test_{uuid.uuid4().hex[:12]}"
    url = await recreate_database(pg_admin_url, name, template=template_database)
    yield url
    await drop_database(pg_admin_url, name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@dataclass
class Aws:
    endpoint: str
    queue_url: str
    dlq_url: str
    bucket: str
    sqs: Any
    s3: Any

    async def put(self, key: str, data: bytes) -> None:
        await self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    async def get(self, key: str, bucket: str | None = None) -> bytes:
        response = await self.s3.get_object(Bucket=bucket or self.bucket, Key=key)
        async with response["Body"] as body:
            data: bytes = await body.read()
            return data

    async def keys(self, prefix: str = "") -> list[str]:
        response = await self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for item in response.get("Contents", [])]

    async def receive_all(self, url: str | None = None) -> list[str]:
        """Bodies of every visible message, received and left invisible for two minutes."""
        bodies: list[str] = []
        while True:
            response = await self.sqs.receive_message(
                QueueUrl=url or self.queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=0,
                VisibilityTimeout=120,
            )
            messages = response.get("Messages", [])
            if not messages:
                return bodies
            bodies.extend(m["Body"] for m in messages)

    async def queue_counts(self, url: str | None = None) -> tuple[int, int]:
        """(visible, in flight) messages."""
        response = await self.sqs.get_queue_attributes(
            QueueUrl=url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
        attributes = response["Attributes"]
        return (
            int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        )


@pytest.fixture
async def aws(aws_endpoint: str) -> AsyncIterator[Aws]:
    session = aioboto3.Session()
    async with (
        session.client("sqs", endpoint_url=aws_endpoint, region_name="us-east-1") as sqs,
        session.client("s3", endpoint_url=aws_endpoint, region_name="us-east-1") as s3,
    ):
        suffix = uuid.uuid4().hex[:10]
        queues = await create_queue_pair(sqs, f"jobs-{suffix}", max_receive_count=5, visibility=30)
        bucket = f"photos-{suffix}"
        await s3.create_bucket(Bucket=bucket)
        yield Aws(aws_endpoint, queues.queue_url, queues.dlq_url, bucket, sqs, s3)


@pytest.fixture
async def throttled_aws(aws: Aws) -> AsyncIterator[str]:
    """The moto endpoint behind a proxy that slows every transfer (0.05 s per chunk), so that a
    job is still running seconds later: for drain and shutdown tests."""
    target = urlsplit(aws.endpoint)
    async with FaultProxy(target.hostname or "127.0.0.1", target.port or 80) as proxy:
        proxy.delay = 0.05
        yield f"http://127.0.0.1:{proxy.port}"


def worker_env(database_url: str, aws: Aws, model_home: Path, **overrides: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": database_url,
        "SQS_QUEUE_URL": aws.queue_url,
        "AWS_ENDPOINT_URL": aws.endpoint,
        "AWS_REGION": "us-east-1",
        "U2NET_HOME": str(model_home),
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": "0",
        "WAIT_TIME_SECONDS": "1",
        "WORKER_CONCURRENCY": "2",
        "CPU_THREADS": "2",
        "VISIBILITY_TIMEOUT_SECONDS": "30",
        "BACKOFF_BASE_SECONDS": "1",
        "BACKOFF_MAX_SECONDS": "2",
        "DRAIN_SECONDS": "20",
        "LOG_FORMAT": "console",
        "WORKER_ID": f"test-{uuid.uuid4().hex[:6]}",
    }
    env.update(overrides)
    return env


@dataclass
class RunningWorker:
    app: WorkerApp
    task: asyncio.Task[None]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.app.port}"

    async def stop(self) -> None:
        self.app.stop_requested.set()
        await asyncio.wait_for(asyncio.shield(self.task), timeout=60)


StartWorker = Callable[..., Awaitable[RunningWorker]]


@pytest.fixture
async def start_worker(database_url: str, aws: Aws, model_home: Path) -> AsyncIterator[StartWorker]:
    running: list[RunningWorker] = []

    async def start(**overrides: str) -> RunningWorker:
        settings = Settings.from_env(worker_env(database_url, aws, model_home, **overrides))
        app = WorkerApp(settings)
        task = asyncio.create_task(app.run(), name=f"worker-{settings.worker_id}")
        ready = asyncio.create_task(app.ready.wait())
        await asyncio.wait({ready, task}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()  # raises the start error
        assert app.ready.is_set(), "worker did not become ready within 120 s"
        worker = RunningWorker(app, task)
        running.append(worker)
        return worker

    yield start
    for worker in running:
        if not worker.task.done():
            await worker.stop()


class WorkerProcess:
    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    async def in_flight(self) -> float:
        return (await scrape(self.url))["image_worker_jobs_in_flight"]

    async def wait_exit(self, timeout: float) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)


SpawnWorker = Callable[..., Awaitable[WorkerProcess]]


@pytest.fixture
async def spawn_worker(
    database_url: str, aws: Aws, model_home: Path, tmp_path: Path
) -> AsyncIterator[SpawnWorker]:
    spawned: list[WorkerProcess] = []

    async def spawn(**overrides: str) -> WorkerProcess:
        port = unused_port()
        env = {
            **os.environ,
            **worker_env(database_url, aws, model_home, METRICS_PORT=str(port), **overrides),
        }
        log = tmp_path / f"worker-{len(spawned)}.log"
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "run", env=env, stdout=sink, stderr=sink
            )
        worker = WorkerProcess(process, port, log)
        spawned.append(worker)

        async def ready() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"worker exited {process.returncode}: {log.read_text()}")
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{worker.url}/readyz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout=120)
        return worker

    yield spawn
    for worker in spawned:
        if worker.process.returncode is None:
            worker.process.kill()
            await worker.process.wait()


@pytest.fixture
async def producer(database_url: str, aws: Aws) -> AsyncIterator[JobClient]:
    settings = ClientSettings(
        database_url=database_url,
        queue_url=aws.queue_url,
        source_bucket=aws.bucket,
        aws_region="us-east-1",
        aws_endpoint_url=aws.endpoint,
    )
    async with JobClient.connect(settings) as client:
        yield client
