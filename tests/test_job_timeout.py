"""JOB_TIMEOUT_SECONDS against real hangs: an S3 read stalled by the fault proxy, and a model run
that holds the worker's only inference thread. Either way the job ends as a transient failure
(row released with the reason, message back after its backoff, slot freed, heartbeat stopped for
it) and completes once the hang is over; a run that cannot be stopped fails /healthz meanwhile.

How the model run is stalled: the worker's own inference pool (INFERENCE_THREADS=1) is given a
call that blocks its one thread on an event, as a run stuck inside ONNX Runtime or a driver
would. A real model cannot be made to hang on demand, and a model that is merely slow would
burn the shared CPUs; the pool, the timeout, the watchdog and /healthz are the worker's own."""

from __future__ import annotations

import io
import threading
import time
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import numpy as np
import pytest
from PIL import Image

from api_client.client import JobClient
from jobcore.jobs import JobStatus
from tests.conftest import Aws, StartWorker
from tests.faults import FaultProxy
from tests.helpers import eventually, scrape, synthetic_scene, wait_finished
from worker.watchdog import StuckRunCheck, TimedThreadPool


def noisy_photo() -> bytes:
    """An 800x600 JPEG of noise: about 0.5 MB (several proxy chunks), quick to process."""
    pixels = np.random.default_rng(3).integers(0, 255, size=(600, 800, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


async def healthz(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as response:
        return response.status, (await response.json())["detail"]


async def job_row(db: asyncpg.Pool, job_id: object) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM image_processing_jobs WHERE id = $1", job_id)
    assert row is not None
    return row


@pytest.mark.slow  # waits out JOB_TIMEOUT_SECONDS
async def test_a_stalled_s3_read_ends_the_job_as_a_transient_failure(
    start_worker: StartWorker, producer: JobClient, aws: Aws, db: asyncpg.Pool
) -> None:
    endpoint = urlsplit(aws.endpoint)
    async with FaultProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80) as proxy:
        photo = noisy_photo()
        assert len(photo) > 6 * 65536
        await aws.put("noise.jpg", photo)
        proxy.delay = 0.2  # per 64 KiB: the download cannot finish before the stall
        worker = await start_worker(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}",
            JOB_TIMEOUT_SECONDS="6",
            WAIT_TIME_SECONDS="0",
        )
        job = await producer.create_job("noise.jpg")

        async def in_flight() -> bool:
            return (await scrape(worker.url))["image_worker_jobs_in_flight"] == 1

        await eventually(in_flight, timeout=30, interval=0.05)
        proxy.stall()

        async def released() -> asyncpg.Record | None:
            row = await job_row(db, job.id)
            return row if row["status"] == "pending" and row["attempts"] == 1 else None

        row = await eventually(released, timeout=30, interval=0.05)
        assert row["claimed_by"] is None
        assert row["error"] == (
            "download: timed out, the job took longer than JOB_TIMEOUT_SECONDS=6"
        )
        metrics = await scrape(worker.url)
        assert metrics['image_worker_job_timeouts_total{stage="download"}'] == 1
        assert (
            metrics['image_worker_job_failures_total{kind="transient",reason="job_timeout"}'] == 1
        )
        assert metrics['image_worker_jobs_total{outcome="retried"}'] == 1

        proxy.resume()
        finished = (await wait_finished(producer, [job.id], timeout=120))[job.id]
        await worker.stop()  # while the proxy still forwards its last calls

    assert finished.status is JobStatus.COMPLETED, finished.error
    assert finished.attempts == 2
    assert await aws.keys("cutouts/") == [f"cutouts/{job.id}.png"]


@pytest.mark.slow  # waits out JOB_TIMEOUT_SECONDS
async def test_a_model_run_that_holds_its_thread_times_out_and_fails_healthz(
    start_worker: StartWorker, producer: JobClient, aws: Aws, db: asyncpg.Pool
) -> None:
    worker = await start_worker(
        INFERENCE_THREADS="1",
        JOB_TIMEOUT_SECONDS="6",
        MODEL_RUN_MAX_SECONDS="600",
        VISIBILITY_TIMEOUT_SECONDS="30",
        HEARTBEAT_INTERVAL_SECONDS="0.5",
    )
    model = worker.app.model
    assert model is not None
    release = threading.Event()
    held = model.executor.submit(release.wait, 120)
    try:
        scene, _ = synthetic_scene(seed=21)
        await aws.put("hang.jpg", scene)
        job = await producer.create_job("hang.jpg")

        async def released() -> asyncpg.Record | None:
            row = await job_row(db, job.id)
            done = row["status"] == "pending" and row["attempts"] == 1
            return row if done and row["claimed_by"] is None else None

        first = await eventually(released, timeout=30, interval=0.05)
        assert first["error"] == (
            "inference: timed out, the job took longer than JOB_TIMEOUT_SECONDS=6"
        )

        async def slot_freed() -> bool:
            return (await scrape(worker.url))["image_worker_jobs_in_flight"] == 0

        await eventually(slot_freed, timeout=10, interval=0.05)

        # The message comes back after its backoff (1-2 s here), not after the 30 s visibility
        # timeout the heartbeat would have kept renewing: the heartbeat stopped for it. The
        # second attempt is claimed while the thread is still held.
        async def claimed_again() -> bool:
            row = await job_row(db, job.id)
            return bool(row["status"] == "processing" and row["attempts"] == 2)

        await eventually(claimed_again, timeout=25, interval=0.05)

        status, detail = await healthz(worker.url)
        assert status == 503
        assert "1 model run(s) stuck past JOB_TIMEOUT_SECONDS=6 leave no model run free" in detail
        metrics = await scrape(worker.url)
        assert metrics["image_worker_stuck_model_runs"] == 1
        assert metrics['image_worker_job_timeouts_total{stage="inference"}'] == 1
        assert metrics["image_worker_inference_seconds_count"] == 0  # no run ever started

        release.set()

        async def healthy() -> bool:
            return (await healthz(worker.url))[0] == 200

        await eventually(healthy, timeout=10, interval=0.1)
        finished = (await wait_finished(producer, [job.id], timeout=60))[job.id]
    finally:
        release.set()
        held.result(timeout=60)

    assert finished.status is JobStatus.COMPLETED, finished.error
    assert finished.attempts == 2
    metrics = await scrape(worker.url)
    assert metrics["image_worker_stuck_model_runs"] == 0
    assert metrics["image_worker_inference_seconds_count"] == 1


def test_stuck_runs_fail_health_when_none_is_left_free_or_one_runs_too_long() -> None:
    pool = TimedThreadPool(max_workers=2, thread_name_prefix="test-inference")
    release = threading.Event()
    lenient = StuckRunCheck(pool, job_timeout=0.05, max_run_seconds=600, capacity=2)
    strict = StuckRunCheck(pool, job_timeout=0.05, max_run_seconds=0.3, capacity=2)
    batching = StuckRunCheck(pool, job_timeout=0.05, max_run_seconds=600, capacity=1)
    try:
        first = pool.submit(release.wait, 60)
        deadline = time.monotonic() + 30
        while lenient.stuck() < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert lenient.problem() is None  # one of two threads held, and not for long
        # The micro-batcher runs one batch at a time: one stuck run stops every job.
        assert "1 model run(s) stuck past JOB_TIMEOUT_SECONDS=0.05 leave no model run free" in (
            batching.problem() or ""
        )
        while strict.problem() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert "over MODEL_RUN_MAX_SECONDS=0.3" in (strict.problem() or "")

        second = pool.submit(release.wait, 60)
        while lenient.stuck() < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert "2 model run(s) stuck past JOB_TIMEOUT_SECONDS=0.05 leave no model run free" in (
            lenient.problem() or ""
        )
        release.set()
        assert first.result(timeout=30)
        assert second.result(timeout=30)
        assert lenient.stuck() == 0
        assert lenient.problem() is None
    finally:
        release.set()
        pool.shutdown(wait=True)


async def test_stopping_does_not_wait_for_a_model_run_that_cannot_be_stopped(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker(INFERENCE_THREADS="1", DRAIN_SECONDS="2")
    model = worker.app.model
    assert model is not None
    release = threading.Event()
    held = model.executor.submit(release.wait, 120)
    try:
        started = time.monotonic()
        await worker.stop()
        # Closed without joining the held thread (a normal exit would wait up to 120 s for it);
        # `image-worker run` then leaves with os._exit.
        assert time.monotonic() - started < 30
        assert model.abandoned_runs == 1
        assert not held.done()
    finally:
        release.set()
        held.result(timeout=10)
