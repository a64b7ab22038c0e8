"""Recipes on the real stack (moto SQS/S3, PostgreSQL, u2netp, small ONNX models built here),
checked by what they do to pixels."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageDraw

from api_client.client import JobClient
from api_client.creation import NewJob
from devstack.stack import sample_photos
from jobcore.jobs import Job, JobStatus
from jobcore.recipe import Recipe
from tests.conftest import Aws, StartWorker
from tests.helpers import scrape, wait_finished
from tests.onnx_models import fixed_map_model

DARK, LIGHT = (40, 34, 30), (236, 232, 222)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def scene(
    size: tuple[int, int],
    subject: tuple[int, int, int],
    backdrop: tuple[int, int, int],
    box: tuple[float, float, float, float] = (0.3, 0.2, 0.7, 0.85),
    **save: Any,
) -> tuple[bytes, tuple[int, int, int, int]]:
    """A JPEG of one rounded object on a plain backdrop, and the object's box (right and
    bottom exclusive)."""
    width, height = size
    image = Image.new("RGB", size, backdrop)
    corners = (int(width * box[0]), int(height * box[1]), int(width * box[2]), int(height * box[3]))
    ImageDraw.Draw(image).rounded_rectangle(corners, radius=min(width, height) // 12, fill=subject)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, **save)
    return buffer.getvalue(), (corners[0], corners[1], corners[2] + 1, corners[3] + 1)


def photo(name: str) -> bytes:
    path = next(p for p in sample_photos() if p.name == name)
    return path.read_bytes()


async def run(
    producer: JobClient, aws: Aws, items: dict[str, tuple[bytes, Recipe | None]]
) -> dict[str, Job]:
    for name, (data, _) in items.items():
        await aws.put(f"sources/{name}", data)
    created = await producer.create_jobs(
        NewJob(f"sources/{name}", book_id=name, recipe=recipe)
        for name, (_, recipe) in items.items()
    )
    finished = await wait_finished(producer, [job.id for job in created], timeout=240)
    return {name: finished[job.id] for name, job in zip(items, created, strict=True)}


async def result(aws: Aws, job: Job, name: str = "image") -> tuple[Image.Image, dict[str, Any]]:
    """An output of the job, checked against its record on the row and its S3 object."""
    assert job.status is JobStatus.COMPLETED, job.error
    assert job.outputs is not None
    record = next(item for item in job.outputs if item["name"] == name)
    head = await aws.s3.head_object(Bucket=record["bucket"], Key=record["key"])
    assert head["ContentType"] == record["content_type"]
    data = await aws.get(record["key"], record["bucket"])
    assert len(data) == record["bytes"]
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.size == (record["width"], record["height"])
    return image, record


@pytest.mark.slow  # every output format through a worker
async def test_background_trim_formats_sizes_and_thumbnails(
    start_worker: StartWorker, producer: JobClient, aws: Aws
) -> None:
    await start_worker(WORKER_CONCURRENCY="4")
    dark, dark_box = scene((640, 480), DARK, LIGHT)
    light, _ = scene((640, 480), LIGHT, DARK)
    edge, edge_box = scene((640, 480), DARK, LIGHT, box=(0.02, 0.2, 0.5, 0.8))
    tagged, _ = scene((400, 300), DARK, LIGHT, icc_profile=SRGB)
    jobs = await run(
        producer,
        aws,
        {
            "plain": (dark, None),
            "dark": (dark, Recipe(background="auto")),
            "light": (light, Recipe(background="auto")),
            "trim": (dark, Recipe(trim=True, padding=12)),
            "trim-edge": (edge, Recipe(trim=True, padding=40)),
            "webp": (
                photo("coffee.png"),
                Recipe(format="webp", background="#00ff00", max_size=300),
            ),
            "jpeg": (
                photo("astronaut.png"),
                Recipe(format="jpeg", background="auto", thumbnails=(64, 300)),
            ),
            "small": (dark, Recipe(max_size=200, thumbnails=(100,))),
            "icc-png": (tagged, Recipe(thumbnails=(50,))),
            "icc-webp": (tagged, Recipe(format="webp")),
            "icc-jpeg": (tagged, Recipe(format="jpeg", background="#808080")),
        },
    )

    plain = jobs["plain"]  # no recipe: the transparent PNG at <prefix><job_id>.png, as ever
    image, record = await result(aws, plain)
    assert plain.result_key == f"cutouts/{plain.id}.png" == record["key"]
    assert (image.format, image.mode, image.size) == ("PNG", "RGBA", (640, 480))
    assert [o["name"] for o in plain.outputs or []] == ["image"]
    assert plain.background_used == {"mode": "transparent"}
    assert plain.model == "u2netp"

    # auto: black behind a dark subject, white behind a light one; the subject's pixels kept.
    for name, colour, subject in [("dark", 0, DARK), ("light", 255, LIGHT)]:
        job = jobs[name]
        image, record = await result(aws, job)
        assert record["key"] == f"cutouts/{job.id}.png"
        assert (image.mode, image.size) == ("RGB", (640, 480))
        pixels = np.asarray(image).astype(int)
        corners = [pixels[5, 5], pixels[5, -5], pixels[-5, 5], pixels[-5, -5]]
        assert all(np.abs(c - colour).max() <= 8 for c in corners), (name, corners)
        assert np.abs(pixels[240, 320] - subject).max() <= 8, name
        assert job.background_used is not None
        assert job.background_used["colour"] == ("#000000" if colour == 0 else "#ffffff")
        luma = job.background_used["luma"]
        assert (luma < 128) if colour == 0 else (luma >= 128), (name, luma)

    # trim: the subject's box plus the padding, clamped to the image at its edge.
    left, top, right, bottom = dark_box
    image, _ = await result(aws, jobs["trim"])
    width, height = image.size
    assert right - left <= width <= right - left + 2 * 12 + 8, image.size
    assert bottom - top <= height <= bottom - top + 2 * 12 + 8, image.size
    alpha = np.asarray(image.getchannel("A"))
    assert alpha[height // 2, width // 2] >= 250
    assert max(alpha[0].max(), alpha[-1].max(), alpha[:, 0].max(), alpha[:, -1].max()) < 32
    left, top, right, bottom = edge_box
    image, _ = await result(aws, jobs["trim-edge"])
    assert right <= image.size[0] <= right + 40 + 4  # no room on the left: clamped at 0
    assert bottom - top + 2 * 40 - 8 <= image.size[1] <= bottom - top + 2 * 40 + 8

    # webp with a colour, bounded to 300 px: the 600x400 photo comes back 300x200.
    image, record = await result(aws, jobs["webp"])
    assert (image.format, image.size, record["content_type"]) == ("WEBP", (300, 200), "image/webp")
    assert record["key"] == f"cutouts/{jobs['webp'].id}.webp"
    assert jobs["webp"].background_used == {"mode": "colour", "colour": "#00ff00"}

    # jpeg and thumbnails at their keys and sides.
    job = jobs["jpeg"]
    image, record = await result(aws, job)
    assert (image.format, image.size) == ("JPEG", (512, 512))
    assert record["key"] == f"cutouts/{job.id}.jpg"
    for side in (64, 300):
        thumb, record = await result(aws, job, f"thumb-{side}")
        assert (thumb.format, thumb.size) == ("JPEG", (side, side))
        assert record["key"] == f"cutouts/{job.id}/thumb-{side}.jpg"
    assert sorted(await aws.keys(f"cutouts/{job.id}")) == [
        f"cutouts/{job.id}.jpg",
        f"cutouts/{job.id}/thumb-300.jpg",
        f"cutouts/{job.id}/thumb-64.jpg",
    ]

    # max_size on a transparent PNG; its thumbnail on white.
    image, _ = await result(aws, jobs["small"])
    assert (image.mode, image.size) == ("RGBA", (200, 150))
    thumb, _ = await result(aws, jobs["small"], "thumb-100")
    assert thumb.size == (100, 75)
    assert np.asarray(thumb)[2, 2].min() >= 245  # transparent -> white in a JPEG

    # The source's ICC profile goes with the pixels into every format.
    for name in ("icc-png", "icc-webp", "icc-jpeg"):
        image, _ = await result(aws, jobs[name])
        assert image.info.get("icc_profile") == SRGB, name
    thumb, _ = await result(aws, jobs["icc-png"], "thumb-50")
    assert thumb.info.get("icc_profile") == SRGB
    image, _ = await result(aws, jobs["plain"])
    assert "icc_profile" not in image.info


async def test_gate_fallback_missing_model_and_size_limit(
    start_worker: StartWorker, producer: JobClient, aws: Aws, tmp_path: Path
) -> None:
    empty = fixed_map_model(tmp_path / "empty.onnx")
    worker = await start_worker(
        WORKER_CONCURRENCY="4", CUSTOM_MODELS=f"empty={empty}", MAX_IMAGE_SIDE="1000"
    )
    dark, _ = scene((640, 480), DARK, LIGHT)
    tiny, tiny_box = scene((640, 480), DARK, LIGHT, box=(0.45, 0.45, 0.55, 0.55))
    uniform = io.BytesIO()
    Image.new("RGB", (640, 480), (128, 128, 128)).save(uniform, format="JPEG")
    wide, _ = scene((1200, 300), DARK, LIGHT)
    matted, _ = scene((240, 180), DARK, LIGHT)
    jobs = await run(
        producer,
        aws,
        {
            "uniform": (uniform.getvalue(), Recipe(background="auto")),
            "uniform-no-recipe": (uniform.getvalue(), None),
            "tiny": (tiny, Recipe(min_subject_px=100)),
            "fallback": (dark, Recipe(model="empty", fallback_model="u2netp")),
            "missing": (dark, Recipe(model="isnet-general-use")),
            "wide": (wide, None),
            "matting": (matted, Recipe(matting=True, background="auto")),
        },
    )

    uniform_job = jobs["uniform"]
    assert uniform_job.status is JobStatus.FAILED
    assert (uniform_job.error or "").startswith("no_subject: the mask is empty: u2netp's peak")
    assert uniform_job.attempts == 1

    # Without a recipe (and no DEFAULT_RECIPE) a job is today's: no gate, a transparent PNG.
    await result(aws, jobs["uniform-no-recipe"])

    tiny_job = jobs["tiny"]
    assert tiny_job.status is JobStatus.FAILED
    left, top, right, bottom = tiny_box
    assert "under min_subject_px=100 (u2netp)" in (tiny_job.error or ""), tiny_job.error
    assert (tiny_job.error or "").startswith("no_subject: the subject's box is ")
    measured = (tiny_job.error or "").split("box is ")[1].split(" px")[0]
    box_w, box_h = (int(v) for v in measured.split("x"))
    assert abs(box_w - (right - left)) <= 8, measured
    assert abs(box_h - (bottom - top)) <= 8, measured

    # The empty model's attempt ends in no_subject; the next runs the fallback and finishes.
    fallback = jobs["fallback"]
    image, _ = await result(aws, fallback)
    assert fallback.attempts == 2
    assert fallback.model == "u2netp"
    alpha = np.asarray(image.getchannel("A"))
    assert alpha[240, 320] >= 250
    assert alpha[5, 5] < 16

    missing = jobs["missing"]
    assert missing.status is JobStatus.FAILED
    assert missing.attempts == 1
    assert "model 'isnet-general-use' cannot be used on this worker" in (missing.error or "")
    assert (missing.error or "").endswith("available: empty, u2netp")

    assert jobs["wide"].status is JobStatus.FAILED
    assert jobs["wide"].error == "image is 1200x300, its longer side over MAX_IMAGE_SIDE=1000"

    image, _ = await result(aws, jobs["matting"])
    assert image.mode == "RGB"
    assert jobs["matting"].background_used is not None

    metrics = await scrape(worker.url)
    # Model runs: uniform twice, tiny, fallback twice, matting; none for the missing model or
    # the over-size image (refused from its header).
    assert metrics["image_worker_inference_seconds_count"] == 6
    gate = "image_worker_quality_gate_failures_total"
    assert metrics[f'{gate}{{model="empty",next="fallback"}}'] == 1
    assert metrics[f'{gate}{{model="u2netp",next="failed"}}'] == 2
    jobs_by = "image_worker_recipe_jobs_total"
    assert metrics[f'{jobs_by}{{fallback="yes",matting="no",model="u2netp"}}'] == 1
    assert metrics[f'{jobs_by}{{fallback="no",matting="yes",model="u2netp"}}'] == 1
    assert metrics['image_worker_job_failures_total{kind="transient",reason="no_subject"}'] == 1
    assert metrics['image_worker_job_failures_total{kind="permanent",reason="no_subject"}'] == 2
    assert metrics['image_worker_model_loads_total{model="empty"}'] == 1
