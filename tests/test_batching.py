"""Micro-batching on the real u2netp graph made batch-symbolic: batched masks equal batch-1
masks, a batch fills up to BATCH_SIZE when jobs arrive together (read from the batch-size
histogram the worker exports), a lone job is not held, and a stopped batcher fails its waiting
callers instead of leaving them hanging."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from api_client.client import JobClient
from devstack.stack import sample_photos
from jobcore.jobs import JobStatus
from tests.conftest import Aws, StartWorker
from tests.helpers import eventually, iou, png_alpha, scrape, synthetic_scene, wait_finished
from worker.batching import BatcherStopped
from worker.inference import ModelRunner
from worker.metrics import WorkerMetrics
from worker.settings import Settings
from worker.supervisor import Supervisor

BASE = {"DATABASE_URL": "postgresql://u@h/db", "SQS_QUEUE_URL": "http://127.0.0.1:1/q"}


def load(model_home: Path, **env: str) -> ModelRunner[Any, Any]:
    return ModelRunner.load(Settings.from_env({**BASE, "U2NET_HOME": str(model_home), **env}))


def batches(runner: ModelRunner[Any, Any]) -> tuple[float, float]:
    """(batches run, images in them) from the runner's batch-size histogram."""
    registry = runner.metrics.registry
    count = registry.get_sample_value("image_worker_inference_batch_size_count")
    total = registry.get_sample_value("image_worker_inference_batch_size_sum")
    assert count is not None
    assert total is not None
    return count, total


@pytest.mark.slow  # many model runs, batched and not
async def test_batched_masks_equal_batch_of_one(model_home: Path) -> None:
    single = load(model_home)
    batched = load(model_home, BATCH_SIZE="4", BATCH_WAIT_MS="200")
    assert batched.batcher is not None
    images = [Image.open(p).convert("RGB") for p in sample_photos()[:3]]
    images.append(Image.open(io.BytesIO(synthetic_scene(seed=2)[0])).convert("RGB"))
    runner = asyncio.create_task(batched.batcher.run())
    try:
        assert batches(batched) == (0, 0)  # the warm-up does not go through the batcher
        outputs = await asyncio.gather(*(batched.infer(batched.prepare(i)) for i in images))
        assert batches(batched) == (1, 4)  # one run of four
        for image, (output, _) in zip(images, outputs, strict=True):
            ours = np.asarray(batched.mask_from_output(output, image.size)).astype(np.int16)
            reference = np.asarray(single.predict(image)).astype(np.int16)
            assert np.abs(ours - reference).max() <= 1

        loop = asyncio.get_running_loop()
        started = loop.time()
        await batched.infer(batched.prepare(images[0]))
        assert batches(batched) == (2, 5)  # then a run of one
        assert loop.time() - started < 5  # bounded by the 200 ms wait plus one model run
    finally:
        runner.cancel()
        single.close()
        batched.close()


async def test_a_stopped_batcher_fails_its_waiting_callers_and_a_restart_serves_again(
    model_home: Path,
) -> None:
    runner = load(model_home, BATCH_SIZE="2", BATCH_WAIT_MS="0", INFERENCE_THREADS="1")
    batcher = runner.batcher
    assert batcher is not None
    tensor = runner.prepare(Image.open(sample_photos()[0]).convert("RGB"))
    assert isinstance(tensor, dict)
    # The one inference thread is held, so the batch the loop forms waits for it.
    release = threading.Event()
    blocker = runner.executor.submit(release.wait, 60)
    try:
        async with Supervisor(WorkerMetrics()) as supervisor:
            loop = supervisor.start("micro_batcher", batcher.run)
            waiting = asyncio.create_task(runner.infer(tensor))

            async def batch_formed() -> bool:
                return batches(runner) == (1, 1)

            await eventually(batch_formed, timeout=30, interval=0.01)
            await loop.stop()
            with pytest.raises(BatcherStopped, match="the micro-batcher stopped"):
                await asyncio.wait_for(waiting, timeout=30)

            release.set()
            supervisor.start("micro_batcher", batcher.run)
            output, _ = await asyncio.wait_for(runner.infer(tensor), timeout=30)
            assert isinstance(output, np.ndarray)
            assert output.shape[0] == 1
            assert batches(runner) == (2, 2)
    finally:
        release.set()
        blocker.result(timeout=60)
        runner.close()


@pytest.mark.slow  # a worker with a batch window
async def test_worker_forms_batches_larger_than_one(
    start_worker: StartWorker, producer: JobClient, aws: Aws
) -> None:
    jobs = []
    for seed in range(4):
        scene, truth = synthetic_scene(seed=seed)
        await aws.put(f"batch/{seed}.jpg", scene)
        jobs.append((await producer.create_job(f"batch/{seed}.jpg"), truth))
    # Four messages waiting before the worker starts: one receive takes them all, and the
    # batcher waits up to a second for a partner, so runs of two form.
    worker = await start_worker(BATCH_SIZE="2", BATCH_WAIT_MS="1000", WORKER_CONCURRENCY="4")
    finished = await wait_finished(producer, [job.id for job, _ in jobs])
    for job, truth in jobs:
        row = finished[job.id]
        assert row.status is JobStatus.COMPLETED, row.error
        assert row.result_key is not None
        _, alpha = png_alpha(await aws.get(row.result_key))
        assert iou(alpha, truth) >= 0.9
    metrics = await scrape(worker.url)
    assert metrics["image_worker_inference_batch_size_sum"] == 4  # every job went through it
    runs = metrics["image_worker_inference_batch_size_count"]
    singles = metrics['image_worker_inference_batch_size_bucket{le="1.0"}']
    assert runs < 4  # so at least one run carried two images
    assert singles < runs
    assert metrics["image_worker_inference_seconds_count"] == 4
    # Every background loop of this worker runs under the supervisor, none restarted.
    for loop in ("queue_stats", "micro_batcher", "visibility_heartbeat", "delete_batcher"):
        assert metrics[f'image_worker_background_loop_up{{loop="{loop}"}}'] == 1
        assert metrics[f'image_worker_background_loop_restarts_total{{loop="{loop}"}}'] == 0
