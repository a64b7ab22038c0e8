"""Outages: PostgreSQL cut or its backends terminated, SQS/S3 refusing or hanging. The worker
backs off, shows it in /readyz and metrics, keeps /healthz alive, and resumes by itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from api_client.client import JobClient
from jobcore.jobs import Job, JobStatus
from tests.conftest import Aws, StartWorker
from tests.faults import FaultProxy
from tests.helpers import eventually, scrape, synthetic_scene, wait_finished
from worker.health import READY_CACHE_SECONDS

pytestmark = pytest.mark.slow  # outages held for a while, the worker backing off and resuming


async def get_json(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def make_jobs(producer: JobClient, aws: Aws, count: int, prefix: str) -> list[Job]:
    jobs = []
    for seed in range(count):
        scene, _ = synthetic_scene(seed=seed)
        await aws.put(f"{prefix}/{seed}.jpg", scene)
        jobs.append(await producer.create_job(f"{prefix}/{seed}.jpg"))
    return jobs


@pytest.fixture
async def database_proxy(database_url: str) -> AsyncIterator[tuple[FaultProxy, str]]:
    parts = urlsplit(database_url)
    if not parts.port or not parts.hostname:
        pytest.skip("PostgreSQL is reached through a socket here; the proxy needs TCP")
    async with FaultProxy(parts.hostname, parts.port) as proxy:
        netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
        yield proxy, urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
async def aws_proxy(aws: Aws) -> AsyncIterator[tuple[FaultProxy, str]]:
    parts = urlsplit(aws.endpoint)
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 80) as proxy:
        yield proxy, f"http://127.0.0.1:{proxy.port}"


async def test_database_outage_is_survived_and_reported(
    start_worker: StartWorker,
    producer: JobClient,
    aws: Aws,
    database_proxy: tuple[FaultProxy, str],
) -> None:
    proxy, proxied_url = database_proxy
    worker = await start_worker(DATABASE_URL=proxied_url)
    (before,) = await make_jobs(producer, aws, 1, "before")
    await wait_finished(producer, [before.id])

    proxy.cut()
    during = await make_jobs(producer, aws, 2, "during")

    async def unready() -> dict[str, object] | None:
        status, body = await get_json(f"{worker.url}/readyz")
        return body if status == 503 else None

    body = await eventually(unready, timeout=20)
    checks = body["checks"]
    assert isinstance(checks, dict)
    assert str(checks["database"]).startswith("unreachable")
    assert (await get_json(f"{worker.url}/healthz"))[0] == 200

    async def claims_failing() -> bool:
        metrics = await scrape(worker.url)
        transient = [v for k, v in metrics.items() if 'kind="transient"' in k]
        return sum(transient) >= 1

    await eventually(claims_failing, timeout=30)
    assert (await scrape(worker.url))['image_worker_dependency_up{dependency="database"}'] == 0
    proxy.resume()

    finished = await wait_finished(producer, [j.id for j in during], timeout=90)
    assert all(row.status is JobStatus.COMPLETED for row in finished.values())
    assert all(row.attempts == 1 for row in finished.values())  # failed claims cost no attempt

    async def ready_again() -> bool:  # /readyz reuses its database check for a few seconds
        return (await get_json(f"{worker.url}/readyz"))[0] == 200

    await eventually(ready_again, timeout=READY_CACHE_SECONDS * 3)
    assert (await scrape(worker.url))['image_worker_dependency_up{dependency="database"}'] == 1


async def test_backends_terminated_mid_run(
    start_worker: StartWorker, producer: JobClient, aws: Aws, db: asyncpg.Pool
) -> None:
    await start_worker()
    jobs = await make_jobs(producer, aws, 6, "terminated")
    for _ in range(4):
        await db.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                WHERE datname = current_database() AND pid <> pg_backend_pid()"""
        )
        await asyncio.sleep(0.5)
    finished = await wait_finished(producer, [j.id for j in jobs], timeout=120)
    assert all(row.status is JobStatus.COMPLETED for row in finished.values()), finished
    leftover = await db.fetchval(
        "SELECT count(*) FROM image_processing_jobs WHERE status = 'processing'"
    )
    assert leftover == 0


async def test_sqs_and_s3_refusing_then_hanging_then_back(
    start_worker: StartWorker,
    producer: JobClient,
    aws: Aws,
    aws_proxy: tuple[FaultProxy, str],
) -> None:
    proxy, proxied_endpoint = aws_proxy
    worker = await start_worker(AWS_ENDPOINT_URL=proxied_endpoint)
    proxy.cut()

    async def receive_failing() -> bool:
        return (await scrape(worker.url))["image_worker_receive_errors_total"] >= 2

    await eventually(receive_failing, timeout=30)
    status, body = await get_json(f"{worker.url}/readyz")
    assert status == 503
    assert body["checks"] == {"model": "loaded", "database": "ok", "sqs": "receive failing"}
    assert (await get_json(f"{worker.url}/healthz"))[0] == 200
    metrics = await scrape(worker.url)
    assert metrics['image_worker_dependency_up{dependency="sqs"}'] == 0

    jobs = await make_jobs(producer, aws, 2, "outage")  # sent straight to moto meanwhile
    proxy.stall()  # now the endpoint accepts but never answers

    async def receive_hangs() -> bool:
        return proxy.held_request(b"AmazonSQS.ReceiveMessage")

    await eventually(receive_hangs, timeout=30, interval=0.05)  # past the backoff of the cut
    # While the receive hangs the worker stays alive and not ready, and takes no job.
    assert (await get_json(f"{worker.url}/healthz"))[0] == 200
    status, body = await get_json(f"{worker.url}/readyz")
    assert status == 503
    assert body["checks"] == {"model": "loaded", "database": "ok", "sqs": "receive failing"}
    for job in jobs:
        row = await producer.get_job(job.id)
        assert row is not None
        assert row.status is JobStatus.PENDING
    proxy.resume()

    finished = await wait_finished(producer, [j.id for j in jobs], timeout=120)
    assert all(row.status is JobStatus.COMPLETED for row in finished.values())

    async def ready_again() -> bool:
        return (await get_json(f"{worker.url}/readyz"))[0] == 200

    await eventually(ready_again, timeout=30)
    assert (await scrape(worker.url))['image_worker_dependency_up{dependency="sqs"}'] == 1
