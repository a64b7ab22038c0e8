"""The FastAPI example under uvicorn, for the tests that drive it (its API, its admin page in a
browser): launch it on a free loopback port, wait until it answers, stop it as a process manager
does."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Aws
from tests.helpers import eventually, unused_port

REPO = Path(__file__).resolve().parents[1]


def app_env(database_url: str, aws: Aws, *, sqs_endpoint: str | None = None) -> dict[str, str]:
    """The app's settings; SQS and S3 endpoints set apart (botocore's per-service variables) so
    that a test can cut the queue alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    return env | {
        "DATABASE_URL": database_url,
        "SQS_QUEUE_URL": aws.queue_url,
        "SOURCE_BUCKET": aws.bucket,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": aws.endpoint,
        "AWS_ENDPOINT_URL_SQS": sqs_endpoint or aws.endpoint,
        "AWS_MAX_ATTEMPTS": "1",
        "CLIENT_CONNECT_TIMEOUT_SECONDS": "2",
    }


class ExampleApp:
    """`uvicorn examples.fastapi_app.app:app` in a subprocess on a free loopback port; its output
    goes to a file."""

    def __init__(self, process: asyncio.subprocess.Process, url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path
        self.http = httpx.AsyncClient(base_url=url, timeout=30)

    @classmethod
    async def launch(cls, env: dict[str, str], log_path: Path) -> ExampleApp:
        port = unused_port()
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "uvicorn",
                "examples.fastapi_app.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        return cls(process, f"http://127.0.0.1:{port}", log_path)

    async def ready(self, timeout: float = 120) -> httpx.AsyncClient:
        """Wait until it answers (its lifespan has opened the JobClient by then)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.returncode is not None:
                raise AssertionError(f"the app exited:\n{self.output()}")
            try:
                await self.http.get("/openapi.json")
                return self.http
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the app did not answer:\n{self.output()}") from None
                await asyncio.sleep(0.2)

    async def stop(self) -> bool:
        """SIGTERM, as a process manager stops it; whether the app shut down cleanly (its lifespan
        closed the JobClient). Uvicorn re-raises the signal once it is done, hence -SIGTERM."""
        await self.http.aclose()
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout=30)
        return code in (0, -signal.SIGTERM) and "Application shutdown complete" in self.output()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


LaunchApp = Callable[[dict[str, str]], Awaitable[ExampleApp]]


@pytest.fixture
async def launch_app(tmp_path: Path) -> AsyncIterator[LaunchApp]:
    apps: list[ExampleApp] = []

    async def launch(env: dict[str, str]) -> ExampleApp:
        app = await ExampleApp.launch(env, tmp_path / f"app-{len(apps)}.log")
        apps.append(app)
        return app

    yield launch
    for app in apps:
        if app.process.returncode is None:
            await app.stop()


def listing(aws: Aws, book_id: str, *keys: str) -> dict[str, Any]:
    return {
        "book_id": book_id,
        "title": f"Book {book_id}",
        "photos": [{"bucket": aws.bucket, "key": key} for key in keys],
    }


async def finished(http: httpx.AsyncClient, job_id: str, timeout: float = 120) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        job: dict[str, Any] = (await http.get(f"/jobs/{job_id}")).raise_for_status().json()
        return job if job["status"] in ("completed", "failed") else None

    return await eventually(probe, timeout=timeout, interval=0.25)
