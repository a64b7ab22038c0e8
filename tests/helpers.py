"""Test helpers shared by the test modules (no test module imports another): waiting on conditions
with a deadline; the local stack's scenes and probes (`devstack.scenes`, `devstack.probes`) under
the names the tests use; the selfcheck command; producer clients on the test stack. Fixtures live
in conftest.py; the Terraform reader in terraform_module.py."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import numpy as np
import pytest
from PIL import Image

from api_client.client import ClientSettings, JobClient
from devstack.probes import scrape, unused_port
from devstack.scenes import synthetic_scene
from jobcore.jobs import Job, decode_message

if TYPE_CHECKING:
    from tests.conftest import Aws

REPO = Path(__file__).resolve().parents[1]

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


def large_photo() -> bytes:
    """A 2400x1800 JPEG of noise (about 3 MB): slow to download through a throttled link."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, size=(1800, 2400, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def selfcheck(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`image-worker selfcheck` in a subprocess with `env` over this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "worker", "selfcheck", *args],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=240,
        check=False,
    )  # fmt: skip


def check_lines(text: str) -> list[str]:
    """The `selfcheck:` lines of selfcheck's output."""
    return [line for line in text.splitlines() if line.startswith("selfcheck:")]


def settings_for(database_url: str, aws: Aws, **changes: Any) -> ClientSettings:
    """Producer settings for the test stack: one AWS attempt and short timeouts, so that an
    outage fails fast; `changes` override any field."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "queue_url": aws.queue_url,
        "source_bucket": aws.bucket,
        "aws_region": "us-east-1",
        "aws_endpoint_url": aws.endpoint,
        "aws_max_attempts": 1,
        "connect_timeout": 3.0,
    }
    values.update(changes)
    return ClientSettings(**values)


@asynccontextmanager
async def client_for(database_url: str, aws: Aws, **changes: Any) -> AsyncIterator[JobClient]:
    async with JobClient.connect(settings_for(database_url, aws, **changes)) as client:
        yield client


def missing_queue_url(aws: Aws) -> str:
    """A queue URL on the test stack's endpoint that names no queue."""
    return aws.queue_url.rsplit("/", 1)[0] + f"/gone-{uuid.uuid4().hex[:8]}"


async def drain(aws: Aws, url: str | None = None) -> list[uuid.UUID]:
    """Receive every visible message of the queue (kept invisible); their job ids."""
    return [decode_message(body) for body in await aws.receive_all(url)]


async def insert_job(
    db: asyncpg.Pool, status: str, *, age: timedelta = timedelta(0), **columns: Any
) -> uuid.UUID:
    """A job row written directly (no message sent), `age` old, in `status`."""
    job_id = uuid.uuid4()
    await db.execute(
        """INSERT INTO image_processing_jobs
               (id, source_bucket, source_key, status, attempts, error, created_at,
                result_bucket, result_key)
           VALUES ($1, 'b', $2, $3, $4, $5, now() - $6::interval,
                   CASE WHEN $3 = 'completed' THEN 'b' END,
                   CASE WHEN $3 = 'completed' THEN 'cutouts/x.png' END)""",
        job_id,
        columns.get("source_key", f"sources/{job_id}.jpg"),
        status,
        columns.get("attempts", 0),
        columns.get("error"),
        age,
    )
    return job_id


class RollBack(Exception):
    """Raised inside a caller's transaction to roll it back."""


__all__ = [
    "CONTRACT_OUTPUT_FIELDS",
    "CapturedLogs",
    "RollBack",
    "capture_logs",
    "check_lines",
    "client_for",
    "contract_fields",
    "drain",
    "eventually",
    "insert_job",
    "iou",
    "large_photo",
    "missing_queue_url",
    "png_alpha",
    "scrape",
    "selfcheck",
    "setting_names",
    "settings_for",
    "synthetic_scene",
    "unused_port",
    "wait_finished",
]
