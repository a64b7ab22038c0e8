"""`image-jobs`: inject images as jobs and watch them finish."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

from api_client.client import ClientConfigError, ClientSettings, JobClient
from worker.jobs import Job

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="image-jobs", description=__doc__)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True)
    inject = commands.add_parser("inject", help="upload local images and create a job for each")
    inject.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    inject.add_argument("--book-id", default=None)
    inject.add_argument("--wait", action="store_true", help="wait for each job to finish")
    inject.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (--wait)")
    args = parser.parse_args(argv)
    try:
        settings = ClientSettings.from_env()
    except ClientConfigError as exc:
        print(f"image-jobs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_inject(settings, args))
    except (OSError, ConnectionError) as exc:
        print(f"image-jobs: cannot reach a service: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def _image_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return files


async def _inject(settings: ClientSettings, args: argparse.Namespace) -> int:
    try:
        files = _image_files(args.paths)
    except FileNotFoundError as exc:
        print(f"image-jobs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    async with JobClient.connect(settings) as client:
        jobs: list[Job] = []
        for path in files:
            key = f"sources/{uuid.uuid4()}{path.suffix.lower()}"
            bucket = await client.upload_source(key, path.read_bytes())
            job = await client.create_job(key, source_bucket=bucket, book_id=args.book_id)
            jobs.append(job)
            _print(args, {"file": str(path), **job.to_dict()}, f"{job.id} {job.status} {path}")
        if not args.wait:
            return EXIT_OK
        deadline = time.monotonic() + args.timeout
        failed = False
        for job in jobs:
            finished = await _wait(client, job.id, deadline)
            if finished is None:
                _print(args, {"id": str(job.id), "status": "timeout"}, f"{job.id} still waiting")
                failed = True
                continue
            failed |= finished.status != "completed"
            detail = finished.error or f"s3://{finished.result_bucket}/{finished.result_key}"
            _print(args, finished.to_dict(), f"{finished.id} {finished.status} {detail}")
        return EXIT_JOB_FAILED if failed else EXIT_OK


async def _wait(client: JobClient, job_id: uuid.UUID, deadline: float) -> Job | None:
    while time.monotonic() < deadline:
        job = await client.get_job(job_id)
        if job is not None and job.status.finished:
            return job
        await asyncio.sleep(0.25)
    return None


def _print(args: argparse.Namespace, payload: dict[str, object], human: str) -> None:
    print(json.dumps(payload) if args.json else human, flush=True)


if __name__ == "__main__":
    sys.exit(main())
