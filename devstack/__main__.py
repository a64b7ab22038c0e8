"""`python -m devstack` (what `make dev` runs): the worker and the producer on the embedded local
stack; the sample photos go through, their cut-outs land in --out."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from pathlib import Path

from api_client import ClientSettings, Job, JobClient, JobWaitTimeout
from api_client.contact_sheet import write_job_sheet
from api_client.recovery import SweepSettings, sweep_forever
from devstack.stack import moto_server, postgres_server, provision, sample_photos
from jobcore.jobs import JobStatus
from jobcore.log_setup import configure_logging
from worker.app import WorkerApp
from worker.cli import install_stop_signals
from worker.settings import Settings

SAMPLE_WAIT_SECONDS = 600.0  # bound on one sample job (the model's first run included)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out"), help="where cut-outs are written")
    parser.add_argument(
        "--exit-after-samples", action="store_true", help="stop once the samples finish"
    )
    args = parser.parse_args(argv)
    return run_dev(args.out, exit_after_samples=args.exit_after_samples)


def run_dev(out_dir: Path, *, exit_after_samples: bool = False) -> int:
    configure_logging("console", os.environ.get("LOG_LEVEL", "info"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with postgres_server() as admin_url, moto_server() as endpoint:
        try:
            return asyncio.run(_dev(admin_url, endpoint, out_dir, exit_after_samples))
        except KeyboardInterrupt:
            return 0


async def _dev(admin_url: str, endpoint: str, out_dir: Path, exit_after_samples: bool) -> int:
    database_url, queues = await provision(
        admin_url, endpoint, database="image_worker_dev", queue="image-jobs", bucket="book-photos"
    )
    env = _dev_env(database_url, queues.queue_url, endpoint)
    app = WorkerApp(Settings.from_env(env))
    async with AsyncExitStack() as stack:
        install_stop_signals(app.stop_requested)
        worker_task = asyncio.create_task(app.run(), name="worker")
        stack.push_async_callback(_stop_worker, app, worker_task)
        await _first_done(app.ready.wait(), worker_task)
        if worker_task.done():
            return 1
        client = await stack.enter_async_context(JobClient.connect(ClientSettings.from_env(env)))
        # The recovery sweep runs here too: queue_failed rows and lost messages recover by
        # themselves on the local stack, as the scheduled task does in AWS.
        sweep_settings = SweepSettings.from_env(env)
        stop_sweeping = asyncio.Event()
        sweeper = asyncio.create_task(
            sweep_forever(client, sweep_settings, stop_sweeping), name="recovery-sweep"
        )
        stack.push_async_callback(_stop_sweeper, stop_sweeping, sweeper)
        await _run_samples(client, app, out_dir)
        print(f"metrics: http://127.0.0.1:{app.port}/metrics", flush=True)
        print(
            f"recovery sweep: every {sweep_settings.interval_seconds:g}s (queue_failed after "
            f"{sweep_settings.grace_seconds:g}s, lost messages after "
            f"{sweep_settings.pending_after_seconds:g}s)",
            flush=True,
        )
        print("inject more (from another shell):", flush=True)
        print(
            f"  DATABASE_URL='{database_url}' SQS_QUEUE_URL='{queues.queue_url}' "
            f"AWS_ENDPOINT_URL='{endpoint}' SOURCE_BUCKET=book-photos "
            "AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "
            f".venv/bin/image-jobs inject --wait --sheet {out_dir / 'more.png'} PATH...",
            flush=True,
        )
        if exit_after_samples:
            app.stop_requested.set()
        else:
            print("Ctrl-C to stop.", flush=True)
        await worker_task
    return 0


def _dev_env(database_url: str, queue_url: str, endpoint: str) -> dict[str, str]:
    """The worker's and the producer's settings on the local stack."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "SQS_QUEUE_URL": queue_url,
        "AWS_ENDPOINT_URL": endpoint,
        "SOURCE_BUCKET": "book-photos",
        "U2NET_HOME": os.environ.get("U2NET_HOME", str(Path.cwd() / ".models")),
        "LOG_FORMAT": "console",
        "METRICS_PORT": os.environ.get("METRICS_PORT", "9100"),
        "MAX_ATTEMPTS": "5",
        "SWEEP_INTERVAL_SECONDS": os.environ.get("SWEEP_INTERVAL_SECONDS", "10"),
    }


async def _run_samples(client: JobClient, app: WorkerApp, out_dir: Path) -> None:
    """The sample photos as jobs; each result into `out_dir`, then the contact sheet."""
    started = time.monotonic()
    jobs = []
    for photo in sample_photos():
        key = f"sources/{photo.name}"
        await client.upload_source(key, photo.read_bytes())
        jobs.append((photo, await client.create_job(key, book_id=photo.stem)))
    for photo, job in jobs:
        finished = await _wait_finished(client, job.id, app)
        if finished is None:
            break
        if (
            finished.status is JobStatus.COMPLETED
            and finished.result_bucket
            and finished.result_key
        ):
            target = out_dir / f"{photo.stem}.png"
            response = await client.require_s3().get_object(
                Bucket=finished.result_bucket, Key=finished.result_key
            )
            async with response["Body"] as body:
                target.write_bytes(await body.read())
            print(f"completed  {photo.name:22} -> {target}", flush=True)
        else:
            print(f"{finished.status:10} {photo.name:22} {finished.error}", flush=True)
    elapsed = time.monotonic() - started
    print(f"{len(jobs)} sample jobs in {elapsed:.1f}s on {app.provider}", flush=True)
    sheet = await write_job_sheet(
        client,
        [(photo.name, job.id, photo.read_bytes()) for photo, job in jobs],
        out_dir / "contact-sheet.png",
    )
    if sheet is not None:
        print(f"contact sheet: {sheet}", flush=True)


async def _stop_worker(app: WorkerApp, task: asyncio.Task[None]) -> None:
    app.stop_requested.set()
    await asyncio.wait({task})


async def _stop_sweeper(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    _, running = await asyncio.wait({task}, timeout=30)
    for late in running:  # a pass stuck past its own bound
        late.cancel()
        await asyncio.wait({late})


async def _first_done(waitable: Awaitable[object], task: asyncio.Task[None]) -> None:
    waiter = asyncio.ensure_future(waitable)
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()


async def _wait_finished(client: JobClient, job_id: uuid.UUID, app: WorkerApp) -> Job | None:
    """The job once finished (the client hears it: no polling here); None when the worker is
    asked to stop first or the job takes longer than SAMPLE_WAIT_SECONDS."""
    waiting = asyncio.ensure_future(client.wait_for_job(job_id, timeout=SAMPLE_WAIT_SECONDS))
    stopping = asyncio.ensure_future(app.stop_requested.wait())
    await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (waiting, stopping):
        task.cancel()
    await asyncio.wait({waiting, stopping})
    if waiting.cancelled() or isinstance(waiting.exception(), JobWaitTimeout):
        return None
    return waiting.result()


if __name__ == "__main__":
    sys.exit(main())
