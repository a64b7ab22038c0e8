"""The whole path on real services: moto SQS/S3, PostgreSQL, the u2netp model."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import numpy as np
import pytest
from PIL import Image

from api_client.client import JobClient
from devstack.stack import sample_photos
from jobcore.jobs import JobStatus
from tests.conftest import Aws, StartWorker
from tests.helpers import eventually, iou, png_alpha, scrape, synthetic_scene, wait_finished
from worker.metrics import STAGES

REPO = Path(__file__).resolve().parents[1]


async def test_sample_photos_and_synthetic_scene_end_to_end(
    start_worker: StartWorker, producer: JobClient, aws: Aws, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = await start_worker()
    photos = sample_photos()
    assert len(photos) == 5, photos
    sources: dict[str, bytes] = {p.name: p.read_bytes() for p in photos}
    scene, truth = synthetic_scene((800, 600), seed=3)
    sources["scene.jpg"] = scene

    jobs = {}
    for name, data in sources.items():
        await aws.put(f"sources/{name}", data)
        job = await producer.create_job(f"sources/{name}", book_id=name)
        assert job.status is JobStatus.PENDING
        jobs[name] = job

    finished = await wait_finished(producer, [j.id for j in jobs.values()], timeout=180)

    for name, job in jobs.items():
        done = finished[job.id]
        assert done.status is JobStatus.COMPLETED, (name, done.error)
        assert done.attempts == 1
        assert done.error is None
        assert done.model == "u2netp"
        assert done.claimed_by == worker.app.settings.worker_id
        assert done.result_bucket == aws.bucket
        assert done.result_key == f"cutouts/{job.id}.png"
        result, alpha = png_alpha(await aws.get(done.result_key))
        source = Image.open(io.BytesIO(sources[name]))
        assert result.size == source.size, name
        # A real cut-out: a good part kept, a good part removed.
        assert (alpha >= 128).mean() > 0.01, name
        assert (alpha < 16).mean() > 0.05, name
        if name == "scene.jpg":
            assert iou(alpha, truth) >= 0.9

    seconds = []
    for done in finished.values():
        assert done.completed_at is not None
        assert done.started_at is not None
        seconds.append((done.completed_at - done.started_at).total_seconds())
    with capsys.disabled():
        print(f"\nper-image time (claim to complete), {len(seconds)} images: "
              f"mean {np.mean(seconds):.3f}s, max {np.max(seconds):.3f}s")  # fmt: skip

    metrics = await scrape(worker.url)
    assert metrics['image_worker_jobs_total{outcome="completed"}'] == len(jobs)
    assert metrics['image_worker_jobs_total{outcome="failed"}'] == 0
    for stage in STAGES:
        assert metrics[f'image_worker_stage_duration_seconds_count{{stage="{stage}"}}'] == len(jobs)
        assert metrics[f'image_worker_stage_duration_seconds_sum{{stage="{stage}"}}'] > 0
    assert metrics["image_worker_inference_seconds_count"] == len(jobs)
    assert metrics["image_worker_messages_received_total"] == len(jobs)
    assert metrics['image_worker_model_info{model="u2netp",provider="CPUExecutionProvider"}'] == 1
    assert metrics["image_worker_model_load_seconds"] > 0
    assert metrics["image_worker_jobs_in_flight"] == 0
    assert await aws.queue_counts() == (0, 0)


async def test_duplicate_message_for_completed_job_is_dropped_without_work(
    start_worker: StartWorker, producer: JobClient, aws: Aws
) -> None:
    worker = await start_worker()
    scene, _ = synthetic_scene(seed=1)
    await aws.put("sources/one.jpg", scene)
    job = await producer.create_job("sources/one.jpg")
    first = (await wait_finished(producer, [job.id]))[job.id]
    assert first.status is JobStatus.COMPLETED

    await aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=f'{{"job_id": "{job.id}"}}')

    async def skipped() -> bool:
        return (await scrape(worker.url))['image_worker_jobs_total{outcome="skipped"}'] == 1

    await eventually(skipped, timeout=30)
    again = await producer.get_job(job.id)
    assert again is not None
    assert again.attempts == 1
    assert again.completed_at == first.completed_at
    assert await aws.keys("cutouts/") == [f"cutouts/{job.id}.png"]
    metrics = await scrape(worker.url)
    assert metrics["image_worker_inference_seconds_count"] == 1
    await eventually(lambda: _queue_empty(aws), timeout=15)


async def _queue_empty(aws: Aws) -> bool:
    return await aws.queue_counts() == (0, 0)


async def test_health_endpoints_and_healthcheck_command(start_worker: StartWorker) -> None:
    worker = await start_worker()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{worker.url}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["ok"] is True
        async with session.get(f"{worker.url}/readyz") as response:
            body = await response.json()
            assert response.status == 200, body
            assert body["checks"] == {"model": "loaded", "database": "ok", "sqs": "ok"}

    command = [
        str(REPO / ".venv/bin/image-worker"),
        "healthcheck",
        "--url",
        f"{worker.url}/healthz",
    ]
    process = await asyncio.create_subprocess_exec(*command)
    assert await process.wait() == 0

    await worker.stop()
    process = await asyncio.create_subprocess_exec(
        *command, stderr=asyncio.subprocess.PIPE, env={**os.environ}
    )
    _, stderr = await process.communicate()
    assert process.returncode == 1
    assert b"health check failed" in stderr


async def test_inject_cli_waits_for_outcomes(
    start_worker: StartWorker, aws: Aws, database_url: str, tmp_path: Path
) -> None:
    await start_worker()
    scene, _ = synthetic_scene(seed=2)
    (tmp_path / "book.jpg").write_bytes(scene)
    (tmp_path / "broken.jpg").write_bytes(b"<html>not an image</html>")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SQS_QUEUE_URL": aws.queue_url,
        "AWS_ENDPOINT_URL": aws.endpoint,
        "SOURCE_BUCKET": aws.bucket,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api_client.cli", "inject", "--wait", "--timeout", "120",
        str(tmp_path / "book.jpg"), str(tmp_path / "broken.jpg"),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    lines = stdout.decode().splitlines()
    assert process.returncode == 1, (lines, stderr.decode())  # one job failed
    outcomes = [line.split()[1] for line in lines[2:]]
    assert outcomes == ["completed", "failed"], lines
    assert "not a supported image" in lines[3]


async def test_queue_and_job_gauges_follow_the_queue_and_table(
    start_worker: StartWorker, aws: Aws, db: asyncpg.Pool
) -> None:
    worker = await start_worker(QUEUE_STATS_INTERVAL_SECONDS="0.5")
    await aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody='{"job_id": "dead"}')
    await db.execute(
        """INSERT INTO image_processing_jobs (id, source_bucket, source_key, created_at)
           VALUES ($1, 'b', 'k', now() - interval '5 minutes')""",
        uuid.uuid4(),
    )

    async def gauges() -> dict[str, float] | None:
        metrics = await scrape(worker.url)
        seen = metrics.get('image_worker_queue_messages{queue="dlq",state="visible"}') == 1
        pending = metrics.get('image_worker_open_jobs{status="pending"}') == 1
        return metrics if seen and pending else None

    metrics = await eventually(gauges, timeout=20)
    assert metrics['image_worker_queue_messages{queue="main",state="visible"}'] == 0
    assert 290 < metrics["image_worker_oldest_pending_job_age_seconds"] < 400
