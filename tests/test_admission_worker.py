"""Memory admission and the CPU-pool watch in the running worker: jobs over the budget wait their
turn and still finish (one larger than the whole budget runs alone); a CPU-pool call stuck past
JOB_TIMEOUT_SECONDS shows in /healthz and the metrics, as stuck model runs do."""

from __future__ import annotations

import threading

import aiohttp
import pytest
from structlog.testing import capture_logs

from api_client.client import JobClient
from jobcore.jobs import JobStatus
from tests.conftest import Aws, StartWorker
from tests.helpers import eventually, scrape, synthetic_scene, wait_finished


@pytest.mark.slow  # jobs queued behind the memory budget
async def test_jobs_over_the_budget_wait_and_finish(
    start_worker: StartWorker, producer: JobClient, aws: Aws
) -> None:
    with capture_logs() as logs:
        # 1 MiB: every job is larger than the budget, so each runs alone.
        worker = await start_worker(MEMORY_BUDGET_MB="1", WORKER_CONCURRENCY="3")
        jobs = []
        for seed in range(3):
            scene, _ = synthetic_scene(seed=seed)
            await aws.put(f"budget/{seed}.jpg", scene)
            jobs.append(await producer.create_job(f"budget/{seed}.jpg"))
        finished = await wait_finished(producer, [j.id for j in jobs])
        metrics = await scrape(worker.url)
    assert all(row.status is JobStatus.COMPLETED for row in finished.values())
    assert metrics["image_worker_memory_budget_bytes"] == 1 << 20
    assert metrics["image_worker_memory_reserved_bytes"] == 0
    waits = [e for e in logs if e["event"] == "waiting for memory"]
    assert waits, "three jobs received together, one admitted at a time: the others waited"
    assert all(e["budget_mib"] == 1 for e in waits)


async def _healthz(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as response:
        body = await response.json()
        return response.status, str(body["detail"])


@pytest.mark.slow  # waits for the watchdog
async def test_stuck_cpu_work_fails_healthz(start_worker: StartWorker) -> None:
    worker = await start_worker(CPU_THREADS="1", JOB_TIMEOUT_SECONDS="1")
    pool = worker.app.cpu_pool
    assert pool is not None
    release = threading.Event()
    held = pool.submit(release.wait, 120)
    try:

        async def unhealthy() -> str | None:
            status, detail = await _healthz(worker.url)
            return detail if status == 503 else None

        detail = await eventually(unhealthy, timeout=20)
        assert "1 CPU-pool call(s) stuck past JOB_TIMEOUT_SECONDS=1" in (detail or "")
        assert (await scrape(worker.url))["image_worker_stuck_cpu_work"] == 1
        release.set()

        async def healthy() -> bool:
            return (await _healthz(worker.url))[0] == 200

        await eventually(healthy, timeout=20)
    finally:
        release.set()
        held.result(timeout=60)
    assert (await scrape(worker.url))["image_worker_stuck_cpu_work"] == 0
