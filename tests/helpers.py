"""Test helpers: waiting on conditions with a deadline; the local stack's scenes and probes
(`devstack.scenes`, `devstack.probes`) under the names the tests use."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import pytest
from PIL import Image

from api_client.client import JobClient
from devstack.probes import scrape, unused_port
from devstack.scenes import synthetic_scene
from jobcore.jobs import Job

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 60.0, interval: float = 0.2
) -> T:
    """Poll `probe` until it returns a truthy value (returned) or the deadline passes."""
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


def iou(alpha: np.ndarray, truth: np.ndarray, threshold: int = 128) -> float:
    predicted = alpha >= threshold
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0


def png_alpha(data: bytes) -> tuple[Image.Image, np.ndarray]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    assert image.mode == "RGBA", image.mode
    return image, np.asarray(image.getchannel("A"))


CONTRACT_OUTPUT_FIELDS = ("name", "bucket", "key", "content_type")


def contract_fields(outputs: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """`outputs` entries cut to the fields every writer records (the worker adds width, height
    and bytes), for comparing with `single_output`."""
    return [{field: output[field] for field in CONTRACT_OUTPUT_FIELDS} for output in outputs or []]


class _AskedEnvironment(dict[str, str]):
    """An empty environment that records every name a settings reader looks up in it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


def setting_names(*readers: Callable[[Mapping[str, str]], object]) -> set[str]:
    """The environment variables these settings classes read (`Settings.from_env` ...), asked of
    an empty environment: every reader reports all its problems at once, so it asks every name."""
    names: set[str] = set()
    for read in readers:
        environ = _AskedEnvironment()
        with contextlib.suppress(ValueError):  # required settings missing: expected here
            read(environ)
        names |= environ.asked
    return names


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


__all__ = [
    "CONTRACT_OUTPUT_FIELDS",
    "CapturedLogs",
    "capture_logs",
    "contract_fields",
    "eventually",
    "iou",
    "png_alpha",
    "scrape",
    "setting_names",
    "synthetic_scene",
    "unused_port",
    "wait_finished",
]
