"""Hostile and odd input: every bad file or message ends with a clear reason (or is dropped when
there is no row), odd-but-valid formats come out right, and the daemon carries on."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import aiohttp
import numpy as np
import pytest

from api_client.client import JobClient
from jobcore.jobs import JobStatus
from tests import images
from tests.conftest import Aws, StartWorker
from tests.helpers import eventually, iou, png_alpha, scrape, synthetic_scene, wait_finished

BAD_INPUTS: dict[str, tuple[bytes | None, str]] = {
    "zero-bytes.jpg": (b"", "source object is empty (0 bytes)"),
    "page.jpg": (b"<!doctype html><html><body>404</body></html>", "not a supported image"),
    "noise.bin": (bytes(range(256)) * 40, "not a supported image"),
    "truncated.jpg": (images.truncated_jpeg(), "cannot be decoded"),
    "bomb.png": (images.png_header_claiming(40000, 40000), "over MAX_IMAGE_PIXELS=64000000"),
    "never-uploaded.jpg": (None, "does not exist"),
}


@pytest.mark.slow  # a dozen bad inputs through a worker
async def test_bad_inputs_fail_with_reasons_and_the_daemon_carries_on(
    start_worker: StartWorker, producer: JobClient, aws: Aws
) -> None:
    worker = await start_worker()
    jobs = {}
    for name, (data, _) in BAD_INPUTS.items():
        if data is not None:
            await aws.put(f"bad/{name}", data)
        jobs[name] = await producer.create_job(f"bad/{name}")
    jobs["missing-bucket"] = await producer.create_job("x.jpg", source_bucket="no-such-bucket")
    for body in ("not json", '{"nope": 1}', '{"job_id": "not-a-uuid"}', "[]"):
        await aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=body)
    good_scene, _ = synthetic_scene(seed=4)
    await aws.put("good.jpg", good_scene)
    good = await producer.create_job("good.jpg")

    finished = await wait_finished(producer, [*(j.id for j in jobs.values()), good.id])

    expected = {name: reason for name, (_, reason) in BAD_INPUTS.items()}
    expected["missing-bucket"] = "bucket 'no-such-bucket' does not exist"
    for name, job in jobs.items():
        row = finished[job.id]
        assert row.status is JobStatus.FAILED, (name, row)
        assert row.error is not None
        assert expected[name] in row.error, (name, row.error)
        assert row.attempts == 1, name
        assert row.result_key is None
    assert finished[good.id].status is JobStatus.COMPLETED

    async def queue_drained() -> bool:
        return await aws.queue_counts() == (0, 0)

    await eventually(queue_drained, timeout=20)
    assert await aws.queue_counts(aws.dlq_url) == (0, 0)
    metrics = await scrape(worker.url)
    assert metrics["image_worker_malformed_messages_total"] == 4
    assert metrics['image_worker_jobs_total{outcome="failed"}'] == len(jobs)
    failures = {k: v for k, v in metrics.items() if k.startswith("image_worker_job_failures_total")}
    assert sum(failures.values()) == len(jobs)
    assert all('kind="permanent"' in k for k in failures), failures
    assert await aws.keys("cutouts/") == [f"cutouts/{good.id}.png"]
    async with aiohttp.ClientSession() as session, session.get(f"{worker.url}/healthz") as response:
        assert response.status == 200


@pytest.mark.slow  # waits out the recheck delay
async def test_unknown_job_id_is_dropped_after_a_recheck(
    start_worker: StartWorker, aws: Aws
) -> None:
    worker = await start_worker()
    await aws.sqs.send_message(
        QueueUrl=aws.queue_url, MessageBody=f'{{"job_id": "{uuid.uuid4()}"}}'
    )

    async def dropped() -> bool:
        metrics = await scrape(worker.url)
        unknown = metrics.get(
            'image_worker_job_failures_total{kind="permanent",reason="unknown_job"}'
        )
        return unknown == 1 and await aws.queue_counts() == (0, 0)

    await eventually(dropped, timeout=30)
    assert (await scrape(worker.url))["image_worker_messages_received_total"] == 2


async def test_object_over_max_image_bytes_fails_before_download(
    start_worker: StartWorker, producer: JobClient, aws: Aws
) -> None:
    await start_worker(MAX_IMAGE_BYTES="1000")
    scene, _ = synthetic_scene(seed=6)
    await aws.put("big.jpg", scene)
    job = await producer.create_job("big.jpg")
    row = (await wait_finished(producer, [job.id]))[job.id]
    assert row.status is JobStatus.FAILED
    assert (
        row.error == f"s3://{aws.bucket}/big.jpg is {len(scene)} bytes, over MAX_IMAGE_BYTES=1000"
    )


VALID_ODDITIES: dict[str, Callable[[], tuple[bytes, np.ndarray]]] = {
    "exif-rotated.jpg": images.exif_rotated_jpeg,
    "cmyk.jpg": images.cmyk_jpeg,
    "16bit.png": images.png_16bit,
    "animated.gif": images.animated_gif,
    "transparent-band.png": images.rgba_png_with_transparent_band,
}


@pytest.mark.parametrize(
    "name",
    # One in the fast lane; each further format starts another worker.
    [
        name if name == "exif-rotated.jpg" else pytest.param(name, marks=pytest.mark.slow)
        for name in VALID_ODDITIES
    ],
)
async def test_odd_formats_succeed_upright_with_a_correct_mask(
    name: str, start_worker: StartWorker, producer: JobClient, aws: Aws
) -> None:
    await start_worker()
    data, truth = VALID_ODDITIES[name]()
    await aws.put(name, data)
    job = await producer.create_job(name)
    row = (await wait_finished(producer, [job.id]))[job.id]
    assert row.status is JobStatus.COMPLETED, row.error
    assert row.result_key is not None
    result, alpha = png_alpha(await aws.get(row.result_key))
    assert result.size == (480, 640)  # upright portrait, whatever the storage orientation
    assert iou(alpha, truth) >= 0.9
    if name == "transparent-band.png":
        assert alpha[:40].max() == 0  # transparent in the source stays transparent
