"""`image-worker selfcheck`: can this image, with this task's settings and role, do its job?

deploy/ecs/deploy.py runs a new task definition once with this command before switching the
service to it (at desiredCount 0 a rollout starts no task and proves nothing). Each check is what
the daemon will do, with the same clients and credentials, bounded in time:

- model: load the weights with the configured provider (REQUIRE_GPU refuses a CPU fallback) and
  cut out a tiny image;
- database: connect and SELECT from the jobs table (migrated, readable);
- completion hook (with COMPLETION_HOOK): the function exists with (uuid, text, jsonb) and this
  role may execute it, as the daemon checks at start;
- queue: GetQueueAttributes on SQS_QUEUE_URL; dlq: find it from the RedrivePolicy (GetQueueUrl)
  and GetQueueAttributes, as the depth gauge does;
- source bucket (with --source-bucket): ListObjectsV2, MaxKeys=1, under the source prefix. This
  proves s3:ListBucket, without which S3 answers a missing key with 403 instead of 404;
- result bucket: PutObject of a small probe at `<RESULT_PREFIX>_selfcheck.txt`, the one S3 write
  the worker makes (a missing grant or key policy would otherwise surface at the first job, as
  retries into the DLQ). One fixed key, overwritten by every check; job outputs are
  `<RESULT_PREFIX><uuid>.<ext>` and `<RESULT_PREFIX><uuid>/thumb-<N>.jpg`, so it never collides.
  The probe stays: one small fixed object.

Exit 0 with one `selfcheck: ok ...` line, or EXIT_FAILED (3) with one `selfcheck: <check>: <why>`
line per failing check."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Any

from jobcore.aws import aws_client
from jobcore.checks import Check, CheckResult, run_bounded
from jobcore.queues import discover_dlq_url, queue_depth
from worker.settings import Settings

EXIT_FAILED = 3
CHECK_TIMEOUT_SECONDS = 30.0
MODEL_TIMEOUT_SECONDS = 600.0  # CUDA initialisation and a first run on a cold GPU
PROBE_SUFFIX = "_selfcheck.txt"


@dataclass(frozen=True, slots=True)
class Targets:
    source_bucket: str | None = None
    source_prefix: str = ""


async def run_checks(settings: Settings, targets: Targets) -> list[CheckResult]:
    import aioboto3

    session = aioboto3.Session()
    aws = settings.aws_options()
    async with (
        aws_client("sqs", aws, session=session) as sqs,
        aws_client("s3", aws, session=session) as s3,
    ):
        checks = [
            Check("model", lambda: check_model(settings), MODEL_TIMEOUT_SECONDS),
            Check("database", lambda: check_database(settings), CHECK_TIMEOUT_SECONDS),
            Check("queue", lambda: check_queue(sqs, settings.queue_url), CHECK_TIMEOUT_SECONDS),
            Check("dlq", lambda: check_dlq(sqs, settings.queue_url), CHECK_TIMEOUT_SECONDS),
        ]
        hook = settings.completion_hook
        if hook is not None:
            checks.append(
                Check("completion hook", lambda: check_hook(settings, hook), CHECK_TIMEOUT_SECONDS)
            )
        if targets.source_bucket:
            source = targets.source_bucket
            checks.append(
                Check(
                    "source bucket",
                    lambda: check_source(s3, source, targets.source_prefix),
                    CHECK_TIMEOUT_SECONDS,
                )
            )
        result_bucket = settings.result_bucket or targets.source_bucket
        if result_bucket:
            checks.append(
                Check(
                    "result bucket",
                    lambda: check_result(s3, result_bucket, settings),
                    CHECK_TIMEOUT_SECONDS,
                )
            )
        return await run_bounded(checks)


async def check_model(settings: Settings) -> str:
    from PIL import Image, ImageDraw

    from worker.inference import ModelRunner

    loop = asyncio.get_running_loop()
    custom_file = dict(settings.custom_models).get(settings.model_name)
    model = await loop.run_in_executor(
        None, lambda: ModelRunner.load(settings, custom_file=custom_file)
    )
    try:
        image = Image.new("RGB", (64, 48), (230, 230, 230))
        ImageDraw.Draw(image).ellipse((16, 8, 48, 40), fill=(40, 90, 160))
        started = time.perf_counter()
        mask = await loop.run_in_executor(None, model.predict, image)
        seconds = time.perf_counter() - started
    finally:
        model.close()
    if mask.size != image.size or mask.mode != "L":
        raise ValueError(f"model returned a {mask.mode} mask of {mask.size}, not L {image.size}")
    return f"{model.model_name} on {model.provider}, {seconds * 1000:.0f} ms"


async def check_database(settings: Settings) -> str:
    import asyncpg

    connection = await asyncpg.connect(settings.database_url, timeout=CHECK_TIMEOUT_SECONDS)
    try:
        await connection.fetch("SELECT id, status FROM image_processing_jobs LIMIT 1")
    finally:
        await connection.close()
    return "image_processing_jobs readable"


async def check_hook(settings: Settings, name: str) -> str:
    import asyncpg

    from worker.completion_hook import HOOK_ARGUMENTS, check_completion_hook

    connection = await asyncpg.connect(settings.database_url, timeout=CHECK_TIMEOUT_SECONDS)
    try:
        await check_completion_hook(connection, name)
    finally:
        await connection.close()
    return f"{name}{HOOK_ARGUMENTS} executable"


async def check_queue(sqs: Any, queue_url: str) -> str:
    await queue_depth(sqs, queue_url)
    return queue_url.rsplit("/", 1)[-1]


async def check_dlq(sqs: Any, queue_url: str) -> str:
    """The DLQ the depth gauge reads: found through the RedrivePolicy, then its depth."""
    dlq_url = await discover_dlq_url(sqs, queue_url)
    if dlq_url is None:
        raise LookupError("the queue has no RedrivePolicy: failed messages have no DLQ")
    await queue_depth(sqs, dlq_url)
    return dlq_url.rsplit("/", 1)[-1]


async def check_source(s3: Any, bucket: str, prefix: str) -> str:
    await s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    return f"s3://{bucket}/{prefix} listable"


async def check_result(s3: Any, bucket: str, settings: Settings) -> str:
    key = f"{settings.result_prefix}{PROBE_SUFFIX}"
    body = f"image-worker selfcheck {settings.worker_id} {time.time():.0f}\n".encode()
    await s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="text/plain")
    return f"s3://{bucket}/{key} written"


def report(results: list[CheckResult]) -> tuple[int, list[str]]:
    """Exit status and the lines to print."""
    failed = [r for r in results if r.problem is not None]
    if failed:
        return EXIT_FAILED, [f"selfcheck: {r.name}: {r.problem}" for r in failed]
    summary = "; ".join(f"{r.name}: {r.detail}" if r.detail else r.name for r in results)
    return 0, [f"selfcheck: ok ({summary})"]


def main(settings: Settings, targets: Targets) -> int:
    status, lines = report(asyncio.run(run_checks(settings, targets)))
    for line in lines:
        print(line, file=sys.stdout if status == 0 else sys.stderr)
    return status
