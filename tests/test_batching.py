"""Micro-batching on the real u2netp graph made batch-symbolic: batched masks equal batch-1
masks, a batch fills up to BATCH_SIZE when jobs arrive together, and a lone job is not held."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
from PIL import Image

from api_client.client import JobClient
from devstack.stack import sample_photos
from jobcore.jobs import JobStatus
from tests.conftest import Aws, StartWorker
from tests.helpers import iou, png_alpha, synthetic_scene, wait_finished
from worker.inference import ModelRunner
from worker.settings import Settings

BASE = {"DATABASE_URL": "postgresql://u@h/db", "SQS_QUEUE_URL": "http://127.0.0.1:1/q"}


def load(model_home: Path, **env: str) -> ModelRunner:
    return ModelRunner.load(Settings.from_env({**BASE, "U2NET_HOME": str(model_home), **env}))


async def test_batched_masks_equal_batch_of_one(model_home: Path) -> None:
    single = load(model_home)
    batched = load(model_home, BATCH_SIZE="4", BATCH_WAIT_MS="200")
    assert batched.batcher is not None
    images = [Image.open(p).convert("RGB") for p in sample_photos()[:3]]
    images.append(Image.open(io.BytesIO(synthetic_scene(seed=2)[0])).convert("RGB"))
    runner = asyncio.create_task(batched.batcher.run())
    try:
        outputs = await asyncio.gather(*(batched.infer(batched.prepare(i)) for i in images))
        assert batched.batcher.batch_sizes == [4]
        for image, (output, _) in zip(images, outputs, strict=True):
            ours = np.asarray(batched.mask_from_output(output, image.size)).astype(np.int16)
            reference = np.asarray(single.predict(image)).astype(np.int16)
            assert np.abs(ours - reference).max() <= 1

        loop = asyncio.get_running_loop()
        started = loop.time()
        await batched.infer(batched.prepare(images[0]))
        assert batched.batcher.batch_sizes[-1] == 1
        assert loop.time() - started < 5  # bounded by the 200 ms wait plus one model run
    finally:
        runner.cancel()
        single.close()
        batched.close()


async def test_worker_with_batching_completes_jobs(
    start_worker: StartWorker, producer: JobClient, aws: Aws
) -> None:
    worker = await start_worker(BATCH_SIZE="2", WORKER_CONCURRENCY="4")
    jobs = []
    for seed in range(4):
        scene, truth = synthetic_scene(seed=seed)
        await aws.put(f"batch/{seed}.jpg", scene)
        jobs.append((await producer.create_job(f"batch/{seed}.jpg"), truth))
    finished = await wait_finished(producer, [job.id for job, _ in jobs])
    for job, truth in jobs:
        row = finished[job.id]
        assert row.status is JobStatus.COMPLETED, row.error
        assert row.result_key is not None
        _, alpha = png_alpha(await aws.get(row.result_key))
        assert iou(alpha, truth) >= 0.9
    assert worker.app.settings.batch_size == 2
