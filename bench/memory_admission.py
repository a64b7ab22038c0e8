"""Memory benchmark: 64 MP worst-case inputs through the real worker daemon (moto SQS/S3,
PostgreSQL) under a real memory limit (a cgroup the benchmark creates: v2 `memory.max`, else v1
`memory.limit_in_bytes`; the worker is its only process). Prints, per run, the cgroup's peak
memory, the peak above the idle worker, whether the kernel OOM-killed the worker, and how the
jobs ended.

Runs: one 64 MP job per input mode (the per-mode peak), then four 64 MP float32 TIFFs at once
(WORKER_CONCURRENCY=4) with admission off (MEMORY_BUDGET_MB=0) and on (the default budget from
the cgroup limit). `--tree DIR` runs the worker from another checkout (e.g. `git archive main`
unpacked) for a before/after in the same session. Needs root (cgroup directories).

    .venv/bin/python -m bench.memory_admission [--limit-mib 4096] [--tree DIR] [--only modes|four]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aioboto3
import aiohttp
import asyncpg
import numpy as np
from PIL import Image

from devstack.probes import unused_port
from devstack.scenes import synthetic_scene
from devstack.stack import (
    FAKE_CREDENTIALS,
    create_queue_pair,
    drop_database,
    moto_server,
    postgres_server,
    recreate_database,
)
from jobcore.jobs import encode_message
from worker.migrate import migrate_url

REPO = Path(__file__).resolve().parents[1]

SIDE = 8000  # 64,000,000 pixels: MAX_IMAGE_PIXELS's default, the largest input accepted
MIB = 1 << 20
MODEL_HOME = Path(os.environ.get("U2NET_HOME", str(REPO / ".models")))
CGROUP_ROOT = Path("/sys/fs/cgroup")


def make_inputs() -> dict[str, bytes]:
    """64 MP inputs, one per decode path. The float TIFF is the worst: under 1 MB of file that
    decodes to 256 MB of float32 pixels."""
    scene, _ = synthetic_scene((1000, 1000), seed=5)
    photo = (
        Image.open(io.BytesIO(scene)).convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    )
    # Runs of equal values within each row: deflate shrinks every row-strip to a few bytes.
    row = np.repeat(np.linspace(-1.0, 3.0, SIDE // 100, dtype=np.float32), 100)

    def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    rgba = photo.copy()
    rgba.putalpha(photo.convert("L"))
    grey16 = Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257)
    return {
        "float32 grey TIFF": encoded(
            Image.fromarray(np.tile(row, (SIDE, 1)), mode="F"), "TIFF",
            compression="tiff_adobe_deflate",
        ),
        "16-bit grey PNG": encoded(grey16, "PNG", compress_level=1),
        "RGB JPEG": encoded(photo, "JPEG", quality=90),
        "CMYK JPEG": encoded(photo.convert("CMYK"), "JPEG", quality=90),
        "RGBA PNG": encoded(rgba, "PNG", compress_level=1),
    }  # fmt: skip


class MemoryCgroup:
    """A memory-limited cgroup for one process tree: v2 where the memory controller is on the
    unified hierarchy, else v1's memory hierarchy."""

    def __init__(self, limit_bytes: int) -> None:
        name = f"image-worker-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        controllers = CGROUP_ROOT / "cgroup.controllers"
        if controllers.exists() and "memory" in controllers.read_text().split():
            self.version = 2
            self.path = CGROUP_ROOT / name
            self.path.mkdir()
            (self.path / "memory.max").write_text(str(limit_bytes))
            swap = self.path / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
        elif (CGROUP_ROOT / "memory" / "memory.limit_in_bytes").exists():
            self.version = 1
            self.path = CGROUP_ROOT / "memory" / name
            self.path.mkdir()
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        else:
            raise SystemExit("no cgroup memory controller is writable here (run as root)")
        self.limit_bytes = limit_bytes

    def join(self) -> None:
        """Move the calling process in (called in the child before exec)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def usage(self) -> int:
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        return int((self.path / name).read_text())

    def peak(self) -> int:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text())

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


@dataclass
class Result:
    name: str
    peak: int
    idle: int
    oom_kills: int
    exit_code: int | None
    outcomes: dict[str, int]
    seconds: float

    def line(self) -> str:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        died = "" if self.exit_code in (None, 0) else f", worker exit {self.exit_code}"
        return (
            f"{self.name:<44} peak {self.peak / MIB:7.0f} MiB  above idle"
            f" {(self.peak - self.idle) / MIB:7.0f} MiB"
            f"  OOM kill {'yes' if self.oom_kills else 'no '}"
            f"  {self.seconds:5.0f}s  [{outcomes}{died}]"
        )


@dataclass
class Stack:
    database_url: str
    endpoint: str
    queue_url: str
    bucket: str
    keys: dict[str, str]


@contextmanager
def worker_process(stack: Stack, cgroup: MemoryCgroup, tree: Path, **env: str) -> Iterator[
    tuple[subprocess.Popen[bytes], int]
]:  # fmt: skip
    port = unused_port()
    environ = {
        **os.environ,
        **FAKE_CREDENTIALS,
        "PYTHONPATH": str(tree),
        "DATABASE_URL": stack.database_url,
        "SQS_QUEUE_URL": stack.queue_url,
        "AWS_ENDPOINT_URL": stack.endpoint,
        "AWS_REGION": "us-east-1",
        "U2NET_HOME": str(MODEL_HOME),
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(port),
        "WAIT_TIME_SECONDS": "1",
        "VISIBILITY_TIMEOUT_SECONDS": "600",
        "JOB_TIMEOUT_SECONDS": "900",
        "MAX_ATTEMPTS": "1",
        # 8000 px sides: over MAX_IMAGE_SIDE's default (4096, refused before decoding); an
        # operator who admits them raises it, and MAX_IMAGE_PIXELS then bounds the input.
        "MAX_IMAGE_SIDE": str(SIDE),
        "LOG_FORMAT": "console",
        "LOG_LEVEL": "warning",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "run"],
        cwd=tree,
        env=environ,
        preexec_fn=cgroup.join,
    )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def wait_ready(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 180
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"the worker exited at start ({process.returncode})")
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise SystemExit("the worker did not become ready")


async def run_case(
    name: str, stack: Stack, keys: list[str], limit: int, tree: Path, **env: str
) -> Result:
    cgroup = MemoryCgroup(limit)
    try:
        with worker_process(stack, cgroup, tree, **env) as (process, port):
            await wait_ready(process, port)
            await asyncio.sleep(2)
            idle = cgroup.usage()
            started = time.monotonic()
            connection = await asyncpg.connect(stack.database_url)
            session = aioboto3.Session()
            try:
                ids = [uuid.uuid4() for _ in keys]
                async with session.client(
                    "sqs", endpoint_url=stack.endpoint, region_name="us-east-1"
                ) as sqs:
                    for job_id, key in zip(ids, keys, strict=True):
                        await connection.execute(
                            "INSERT INTO image_processing_jobs (id, source_bucket, source_key)"
                            " VALUES ($1, $2, $3)",
                            job_id, stack.bucket, key,
                        )  # fmt: skip
                        await sqs.send_message(
                            QueueUrl=stack.queue_url, MessageBody=encode_message(job_id)
                        )
                while process.poll() is None and time.monotonic() - started < 1800:
                    rows = await connection.fetch(
                        "SELECT status FROM image_processing_jobs WHERE id = ANY($1)", ids
                    )
                    if all(r["status"] in ("completed", "failed") for r in rows):
                        break
                    await asyncio.sleep(0.5)
                rows = await connection.fetch(
                    "SELECT status FROM image_processing_jobs WHERE id = ANY($1)", ids
                )
            finally:
                await connection.close()
            outcomes: dict[str, int] = {}
            for row in rows:
                outcomes[row["status"]] = outcomes.get(row["status"], 0) + 1
            return Result(
                name,
                cgroup.peak(),
                idle,
                cgroup.oom_kills(),
                process.poll(),
                outcomes,
                time.monotonic() - started,
            )
    finally:
        cgroup.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit-mib", type=int, default=4096)
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout the worker runs from")
    parser.add_argument("--only", choices=("modes", "four"), default=None)
    args = parser.parse_args()
    for key, value in FAKE_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    print(f"making 64 MP inputs ({SIDE}x{SIDE})...", flush=True)
    inputs = make_inputs()
    for name, data in inputs.items():
        print(f"  {name:<20} {len(data) / MIB:8.2f} MiB file", flush=True)
    with postgres_server() as admin_url, moto_server() as endpoint:
        asyncio.run(run_all(args, inputs, admin_url, endpoint))


async def run_all(
    args: argparse.Namespace, inputs: dict[str, bytes], admin_url: str, endpoint: str
) -> None:
    limit = args.limit_mib * MIB
    name = f"iw_bench_memory_{os.getpid()}"
    database_url = await recreate_database(admin_url, name)
    await migrate_url(database_url)
    session = aioboto3.Session()
    try:
        async with (
            session.client("sqs", endpoint_url=endpoint, region_name="us-east-1") as sqs,
            session.client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3,
        ):
            queues = await create_queue_pair(sqs, "bench-memory", max_receive_count=1)
            bucket = "bench-memory"
            await s3.create_bucket(Bucket=bucket)
            for index, data in enumerate(inputs.values()):
                await s3.put_object(Bucket=bucket, Key=f"in/{index}", Body=data)
        stack = Stack(database_url, endpoint, queues.queue_url, bucket, {})
        keys = {name: f"in/{index}" for index, name in enumerate(inputs)}
        print(f"\nmemory limit {args.limit_mib} MiB (cgroup), worker from {args.tree}")
        if args.only in (None, "modes"):
            print("\none 64 MP job per mode (WORKER_CONCURRENCY=1):", flush=True)
            for mode, key in keys.items():
                result = await run_case(
                    mode, stack, [key], limit, args.tree,
                    WORKER_CONCURRENCY="1", CPU_THREADS="2",
                )  # fmt: skip
                print(result.line(), flush=True)
        if args.only in (None, "four"):
            print("\nfour 64 MP float32 TIFFs at once (WORKER_CONCURRENCY=4):", flush=True)
            worst = [keys["float32 grey TIFF"]] * 4
            cases = {
                "admission off (MEMORY_BUDGET_MB=0)": {"MEMORY_BUDGET_MB": "0"},
                "admission on (default budget)": {},
            }
            for label, budget in cases.items():
                result = await run_case(
                    label, stack, worst, limit, args.tree,
                    WORKER_CONCURRENCY="4", CPU_THREADS="4", **budget,
                )  # fmt: skip
                print(result.line(), flush=True)
    finally:
        await drop_database(admin_url, name)


if __name__ == "__main__":
    main()
