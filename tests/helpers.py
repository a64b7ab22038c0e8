"""Test helpers: waiting on conditions with a deadline, reading metrics, synthetic scenes."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import aiohttp
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from prometheus_client.parser import text_string_to_metric_families

from api_client.client import JobClient
from jobcore.jobs import Job

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], *, timeout: float = 60.0, interval: float = 0.2
) -> T:
    """Poll `probe` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)


async def wait_finished(
    client: JobClient, job_ids: Iterable[uuid.UUID], *, timeout: float = 120.0
) -> dict[uuid.UUID, Job]:
    wanted = list(job_ids)

    async def probe() -> dict[uuid.UUID, Job] | None:
        jobs = {job_id: await client.get_job(job_id) for job_id in wanted}
        if all(job is not None and job.status.finished for job in jobs.values()):
            return {k: v for k, v in jobs.items() if v is not None}
        return None

    return await eventually(probe, timeout=timeout, interval=0.25)


async def scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics as {'name{label="v",...}': value}."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def synthetic_scene(
    size: tuple[int, int] = (640, 480),
    *,
    seed: int = 0,
    box: tuple[float, float, float, float] = (0.3, 0.2, 0.7, 0.85),
) -> tuple[bytes, np.ndarray]:
    """A product-photo-like scene: one solid, shaded object on a plain light backdrop.
    Returns JPEG bytes and the true foreground mask (bool, H x W)."""
    rng = np.random.default_rng(seed)
    width, height = size
    backdrop = Image.new("RGB", size, (236, 234, 228))
    truth = Image.new("L", size, 0)
    corners = (int(width * box[0]), int(height * box[1]), int(width * box[2]), int(height * box[3]))
    ImageDraw.Draw(truth).rounded_rectangle(corners, radius=min(width, height) // 12, fill=255)
    colour = tuple(int(c) for c in rng.integers(30, 140, size=3))
    shaded = Image.new("RGB", size, colour)
    gradient = Image.linear_gradient("L").resize(size).filter(ImageFilter.GaussianBlur(4))
    shaded = Image.composite(shaded, Image.eval(shaded, lambda v: min(255, v + 60)), gradient)
    backdrop.paste(shaded, mask=truth)
    buffer = io.BytesIO()
    backdrop.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue(), np.asarray(truth) > 127


def iou(alpha: np.ndarray, truth: np.ndarray, threshold: int = 128) -> float:
    predicted = alpha >= threshold
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0


def png_alpha(data: bytes) -> tuple[Image.Image, np.ndarray]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    assert image.mode == "RGBA", image.mode
    return image, np.asarray(image.getchannel("A"))


def unused_port() -> int:
    """A loopback port nobody listens on now: to bind a server to, or to find nothing at."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class CapturedLogs:
    """The stdlib log records of the `image_worker` loggers inside a `capture_logs` block."""

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []


@contextmanager
def capture_logs(caplog: pytest.LogCaptureFixture) -> Iterator[CapturedLogs]:
    captured = CapturedLogs()
    with caplog.at_level(logging.DEBUG, logger="image_worker"):
        start = len(caplog.records)
        yield captured
        captured.records = [r for r in caplog.records[start:] if r.name.startswith("image_worker")]
