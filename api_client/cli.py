"""`image-jobs`: inject images as jobs, watch them, and repair the queue.

Settings come from the environment: DATABASE_URL, SQS_QUEUE_URL, SOURCE_BUCKET, AWS_ENDPOINT_URL,
AWS_REGION, SQS_DLQ_URL (else found from the queue's RedrivePolicy), AWS_MAX_ATTEMPTS,
CLIENT_CONNECT_TIMEOUT_SECONDS; for `sweep`: SWEEP_GRACE_SECONDS, SWEEP_PENDING_AFTER_SECONDS,
SWEEP_MAX_PER_PASS, SWEEP_MAX_PER_SECOND, SWEEP_INTERVAL_SECONDS.

Exit codes: 0 ok; 1 a job failed, timed out or does not exist; 2 bad arguments or settings;
3 the database or SQS/S3 cannot be reached."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import asyncpg
from botocore.exceptions import ClientError

from api_client.client import JobClient, NewJob
from api_client.errors import ClientConfigError, JobWaitTimeout
from api_client.output import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Output,
    Progress,
    describe_error,
    health_text,
    sweep_line,
    warn,
    watch_line,
)
from api_client.recovery import SweepReport, SweepSettings, sweep_forever
from api_client.settings import ClientSettings
from jobcore.aws import aws_client
from jobcore.cancel_queries import CancelOutcome
from jobcore.jobs import Job, JobStatus
from jobcore.log_setup import configure_logging
from jobcore.recipe import Recipe, RecipeError
from jobcore.s3_errors import is_missing

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"}
UPLOAD_CONCURRENCY = 8

Command = Callable[[ClientSettings, argparse.Namespace, Output], Coroutine[Any, Any, int]]


class Parser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr and exit 2 (argparse prints the usage block too)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("console", "warning" if args.verbose else "critical")
    settings: ClientSettings | None = None
    try:
        required = ("SQS_QUEUE_URL",) if args.command == "send-raw" else None
        settings = (
            ClientSettings.from_env(required=required) if required else ClientSettings.from_env()
        )
        command: Command = args.handler
        return asyncio.run(command(settings, args, Output(args.json)))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        code, line = describe_error(exc, settings)
        warn(line)
        return code


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log warnings to stderr",
    )
    parser = Parser(
        prog="image-jobs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("-v", "--verbose", action="store_true", help="log warnings to stderr")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def add(name: str, handler: Command, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    inject = add(
        "inject",
        cmd_inject,
        "upload images (files, folders) or use s3://bucket/key objects, and create a job for each",
    )
    inject.add_argument("paths", nargs="+", help="image file, folder of images, or s3://bucket/key")
    inject.add_argument("--bucket", help="source bucket for uploads (default SOURCE_BUCKET)")
    inject.add_argument("--prefix", default="sources/", help="key prefix for uploads")
    inject.add_argument("--book-id", default=None)
    _recipe_options(inject)
    _wait_options(inject)
    inject.add_argument(
        "--sheet",
        type=Path,
        metavar="FILE",
        help="with --wait: write a PNG contact sheet, each photo beside its cut-out",
    )
    inject.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress counter on stderr (default: on a terminal, >1 file)",
    )

    enqueue = add("enqueue", cmd_enqueue, "create a job for an object already in S3")
    enqueue.add_argument("--bucket", help="default SOURCE_BUCKET")
    enqueue.add_argument("--key", required=True, action="append", help="object key (repeatable)")
    enqueue.add_argument("--book-id", default=None)
    _recipe_options(enqueue)
    _wait_options(enqueue)

    cancel = add(
        "cancel",
        cmd_cancel,
        "cancel a job: not yet claimed -> cancelled now; running -> its worker stops it",
    )
    cancel.add_argument("job_id", type=_job_id)
    cancel.add_argument("--reason", help="kept on the row (default: cancelled)")

    raw = add("send-raw", cmd_send_raw, "send a raw message body (poison-handling tests)")
    raw.add_argument("body", help="message body; '-' reads stdin")
    raw.add_argument("--queue-url", help="default SQS_QUEUE_URL")

    status = add("status", cmd_status, "show one job (exit 1 when failed or unknown)")
    status.add_argument("job_id", type=_job_id)
    _wait_options(status)

    listing = add("list", cmd_list, "list jobs, newest first")
    listing.add_argument(
        "--status",
        action="append",
        choices=[s.value for s in JobStatus],
        help="only this status (repeatable)",
    )
    listing.add_argument("--older-than", type=_duration, help="e.g. 90s, 15m, 2h, 1d")
    listing.add_argument("--newer-than", type=_duration, help="e.g. 90s, 15m, 2h, 1d")
    listing.add_argument("--book-id")
    listing.add_argument("--limit", type=_positive_int, default=50)
    listing.add_argument("--oldest-first", action="store_true")

    watch = add("watch", cmd_watch, "print job counts and queue depth every --interval")
    watch.add_argument("--interval", type=_positive_float, default=2.0, help="seconds")
    bound = watch.add_mutually_exclusive_group()
    bound.add_argument("--count", type=_positive_int, help="stop after this many lines")
    bound.add_argument("--once", action="store_true", help="one line, then exit")

    retry_qf = add(
        "retry-queue-failed",
        cmd_retry_queue_failed,
        "re-send the messages of queue_failed jobs, oldest first",
    )
    retry_qf.add_argument("--limit", type=_positive_int, default=100)

    retry = add(
        "retry-failed",
        cmd_retry_failed,
        "reset failed jobs to queue_failed (attempts 0, error cleared), then send them (pending)",
    )
    retry.add_argument("job_ids", nargs="*", type=_job_id)
    retry.add_argument("--all", action="store_true", help="every failed job (with the filters)")
    retry.add_argument("--error-contains", help="only jobs whose error contains this text")
    retry.add_argument("--older-than", type=_duration)
    retry.add_argument("--limit", type=_positive_int, default=100)

    redrive = add(
        "redrive-dlq",
        cmd_redrive_dlq,
        "move DLQ messages back to the queue, resetting their failed jobs",
    )
    redrive.add_argument("--dlq-url", help="default SQS_DLQ_URL or the queue's RedrivePolicy")
    redrive.add_argument("--limit", type=_positive_int, default=None)

    add("stats", cmd_stats, "job counts by status, oldest pending age, queue and DLQ depth")

    sweep = add(
        "sweep",
        cmd_sweep,
        "automatic recovery: re-send queue_failed jobs past a grace period and pending jobs whose "
        "message is lost (one pass; --loop to repeat). Settings: SWEEP_* variables or options",
    )
    sweep.add_argument("--loop", action="store_true", help="repeat every --interval until stopped")
    sweep.add_argument("--interval", type=_positive_float, help="seconds between passes (--loop)")
    sweep.add_argument("--grace", type=_positive_float, help="queue_failed age to re-send, seconds")
    sweep.add_argument(
        "--pending-after", type=_positive_float, help="pending idle time to re-send, seconds"
    )
    sweep.add_argument("--max-per-pass", type=_positive_int, help="rows re-sent per pass at most")
    sweep.add_argument("--max-per-second", type=_positive_float, help="messages per second at most")
    sweep.add_argument(
        "--emf",
        action="store_true",
        help="print each pass as a CloudWatch Embedded Metric Format JSON line",
    )

    health = add(
        "health",
        cmd_health,
        "check PostgreSQL, the queue, the DLQ and the source bucket (exit 0 healthy, 3 not)",
    )
    health.add_argument("--timeout", type=_positive_float, default=5.0, help="seconds per check")
    return parser


# Recipe field -> flag; every flag's value is the field's (thumbnails: --thumbnail, repeatable).
RECIPE_FLAGS = {
    "model": "--model",
    "fallback_model": "--fallback-model",
    "matting": "--matting",
    "background": "--background",
    "format": "--format",
    "trim": "--trim",
    "padding": "--padding",
    "max_size": "--max-size",
    "thumbnails": "--thumbnail",
    "min_subject_px": "--min-subject-px",
}


def _recipe_options(sub: argparse.ArgumentParser) -> None:
    group = sub.add_argument_group("recipe (default: the worker's DEFAULT_RECIPE)")
    group.add_argument("--model", help="rembg model name, e.g. u2netp, u2net, isnet-general-use")
    group.add_argument("--fallback-model", help="model of the last attempt")
    group.add_argument("--matting", action="store_true", default=None, help="refine the edge")
    group.add_argument("--background", help="transparent, auto or #RRGGBB")
    group.add_argument("--format", help="png, webp or jpeg")
    group.add_argument("--trim", action="store_true", default=None, help="crop to the subject")
    group.add_argument("--padding", type=int, help="pixels around the trimmed subject")
    group.add_argument("--max-size", type=int, help="bound on the longer side, pixels")
    group.add_argument(
        "--thumbnail", type=int, action="append", help="a JPEG preview's longer side (repeatable)"
    )
    group.add_argument("--min-subject-px", type=int, help="smallest subject box side, pixels")


def recipe_from(args: argparse.Namespace) -> Recipe | None:
    """The recipe the flags ask for (None: no flag given); an invalid one is an error naming
    its flag."""
    given = {
        field: getattr(args, flag[2:].replace("-", "_"))
        for field, flag in RECIPE_FLAGS.items()
        if getattr(args, flag[2:].replace("-", "_")) is not None
    }
    if not given:
        return None
    try:
        return Recipe(**given)
    except RecipeError as exc:
        flag = RECIPE_FLAGS.get(exc.field, f"--{exc.field.replace('_', '-')}")
        raise ClientConfigError(f"{flag}: {str(exc).partition(': ')[2]}") from None


def _wait_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--wait", action="store_true", help="wait for the job(s) to finish")
    sub.add_argument("--timeout", type=_positive_float, default=300.0, help="seconds (--wait)")


def _job_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a job id (UUID): {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> timedelta:
    number, unit = (text[:-1], text[-1]) if text[-1:] in UNITS else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration (90s, 15m, 2h, 1d): {text!r}") from None
    return timedelta(seconds=value * UNITS[unit])


# -- creating jobs ---------------------------------------------------------------------------------


def _sources(items: list[str]) -> list[Path | tuple[str, str]]:
    """Local files (folders expanded, images only) and (bucket, key) pairs, in the given order."""
    sources: list[Path | tuple[str, str]] = []
    for item in items:
        if item.startswith("s3://"):
            bucket, _, key = item[5:].partition("/")
            if not bucket or not key:
                raise ClientConfigError(f"not an s3://bucket/key address: {item}")
            sources.append((bucket, key))
            continue
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ClientConfigError(f"no images in folder: {path}")
            sources.extend(found)
        elif path.is_file():
            sources.append(path)
        else:
            raise ClientConfigError(f"no such file or folder: {path}")
    return sources


async def cmd_inject(settings: ClientSettings, args: argparse.Namespace, out: Output) -> int:
    if args.sheet and not args.wait:
        raise ClientConfigError("--sheet needs --wait (the sheet shows finished jobs)")
    sources = _sources(args.paths)
    uploads = [s for s in sources if isinstance(s, Path)]
    bucket = args.bucket or settings.source_bucket
    if uploads and not bucket:
        raise ClientConfigError("no source bucket for uploads: pass --bucket or set SOURCE_BUCKET")
    recipe = recipe_from(args)
    show = args.progress if args.progress is not None else sys.stderr.isatty() and len(uploads) > 1
    progress = Progress(len(uploads), "uploaded", bool(show))
    async with JobClient.connect(settings) as client:
        await _check_objects(client, [s for s in sources if isinstance(s, tuple)])
        keys: dict[Path, str] = {}
        limiter = asyncio.Semaphore(UPLOAD_CONCURRENCY)

        async def upload(path: Path) -> None:
            async with limiter:
                key = f"{args.prefix}{uuid.uuid4()}{path.suffix.lower()}"
                data = await asyncio.to_thread(path.read_bytes)
                await client.upload_source(key, data, bucket=bucket)
                keys[path] = key
                progress.step()

        try:
            await asyncio.gather(*(upload(path) for path in uploads))
        finally:
            progress.close()
        specs = [
            NewJob(keys[s], bucket, args.book_id, recipe=recipe)
            if isinstance(s, Path)
            else NewJob(s[1], s[0], args.book_id, recipe=recipe)
            for s in sources
        ]
        jobs = await client.create_jobs(specs)
        for source, job in zip(sources, jobs, strict=True):
            label = str(source) if isinstance(source, Path) else f"s3://{source[0]}/{source[1]}"
            out.emit({"file": label, **job.to_dict()}, f"{job.id} {job.status} {label}")
        code = await _warn_unsent_and_wait(client, jobs, args, out)
        if args.sheet:
            await _write_sheet(client, args.sheet, sources, jobs, out)
        return code


async def _write_sheet(
    client: JobClient,
    path: Path,
    sources: list[Path | tuple[str, str]],
    jobs: list[Job],
    out: Output,
) -> None:
    try:
        from api_client.contact_sheet import write_job_sheet  # Pillow: the `sheet` extra
    except ImportError as exc:
        raise ClientConfigError(
            f"--sheet needs Pillow: install image-worker[sheet] ({exc})"
        ) from None
    entries = [
        (s.name, job.id, s.read_bytes()) if isinstance(s, Path) else (s[1], job.id, None)
        for s, job in zip(sources, jobs, strict=True)
    ]
    written = await write_job_sheet(client, entries, path)
    if written is None:
        warn("no contact sheet: no job finished")
    else:
        out.emit({"sheet": str(written)}, f"contact sheet: {written}")


async def cmd_enqueue(settings: ClientSettings, args: argparse.Namespace, out: Output) -> int:
    bucket = args.bucket or settings.source_bucket
    if not bucket:
        raise ClientConfigError("no bucket: pass --bucket or set SOURCE_BUCKET")
    recipe = recipe_from(args)
    async with JobClient.connect(settings) as client:
        await _check_objects(client, [(bucket, key) for key in args.key])
        jobs = await client.create_jobs(
            [NewJob(key, bucket, args.book_id, recipe=recipe) for key in args.key]
        )
        for job in jobs:
            out.emit(job.to_dict(), f"{job.id} {job.status} s3://{bucket}/{job.source_key}")
        return await _warn_unsent_and_wait(client, jobs, args, out)


async def _check_objects(client: JobClient, objects: list[tuple[str, str]]) -> None:
    """An object that is not there makes a job that can only fail: refuse it up front."""
    for bucket, key in objects:
        try:
            await client.require_s3().head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                raise ClientConfigError(f"no such object: s3://{bucket}/{key}") from None
            raise


async def _warn_unsent_and_wait(
    client: JobClient, jobs: list[Job], args: argparse.Namespace, out: Output
) -> int:
    unsent = [job for job in jobs if job.status is JobStatus.QUEUE_FAILED]
    if unsent:
        warn(
            f"{len(unsent)} job(s) saved but not queued ({_one(unsent[0].error)}); they are "
            "queue_failed: run `image-jobs retry-queue-failed` once SQS is back"
        )
    code = EXIT_OK
    if args.wait:
        deadline = time.monotonic() + args.timeout
        for job in jobs:
            if job.status is JobStatus.QUEUE_FAILED:
                continue
            if not await _wait_one(client, job, deadline, out):
                code = EXIT_JOB_FAILED
    return EXIT_UNAVAILABLE if unsent else code


async def _wait_one(client: JobClient, job: Job, deadline: float, out: Output) -> bool:
    """Wait for one job and print its outcome; True when it completed."""
    try:
        finished = await client.wait_for_job(
            job.id, timeout=max(0.001, deadline - time.monotonic()), interval=0.25
        )
    except JobWaitTimeout as exc:
        out.emit(
            {**exc.job.to_dict(), "timed_out": True},
            f"{job.id} {exc.job.status} still waiting (timed out)",
        )
        return False
    detail = finished.error or f"s3://{finished.result_bucket}/{finished.result_key}"
    out.emit(finished.to_dict(), f"{finished.id} {finished.status} {detail}")
    return finished.status is JobStatus.COMPLETED


def _one(text: str | None) -> str:
    return " ".join((text or "").split())[:160]


async def cmd_send_raw(settings: ClientSettings, args: argparse.Namespace, out: Output) -> int:
    body = sys.stdin.read() if args.body == "-" else args.body
    if not body:
        raise ClientConfigError("the message body is empty")
    queue_url = args.queue_url or settings.queue_url
    async with aws_client("sqs", settings.aws_options()) as sqs:
        response = await sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    message_id = response["MessageId"]
    out.emit({"message_id": message_id, "queue_url": queue_url}, f"sent {message_id}")
    return EXIT_OK


async def cmd_cancel(settings: ClientSettings, args: argparse.Namespace, out: Output) -> int:
    async with JobClient.connect(settings) as client:
        result = await client.cancel_job(args.job_id, args.reason)
    payload = {"outcome": result.outcome.value, "job": result.job.to_dict() if result.job else None}
    out.emit(payload, f"{args.job_id} {CANCEL_TEXT[result.outcome]}")
    return EXIT_JOB_FAILED if result.outcome is CancelOutcome.NOT_FOUND else EXIT_OK


CANCEL_TEXT = {
    CancelOutcome.CANCELLED: "cancelled",
    CancelOutcome.REQUESTED: "is running: asked to stop (it ends as cancelled, leaving no object)",
    CancelOutcome.ALREADY_FINISHED: "already finished; unchanged",
    CancelOutcome.NOT_FOUND: "not found",
}


# -- looking -------------------------------------------------------------------------------------


async def cmd_status(settings: ClientSettings, args: argparse.Namespace, out: Output) -> int:
    async with JobClient.connect(settings) as client:
        if args.wait:
            try:
                job = await client.wait_for_job(args.job_id, timeout=args.timeout)
            except JobWaitTimeout as exc:
                out.job(exc.job)
                warn(str(exc))
                return EXIT_JOB_FAILED
        else:
            found = await client.get_job(args.job_id)
            if found is None:
                warn(f"no job {args.job_id}")
                return EXIT_JOB_FAILED
            job = found
        out.job(job)
        return EXIT_JOB_FAILED if job.status is JobStatus.FAILED else EXIT_OK


async def cmd_list(settings: ClientSettings, args: argparse.Namespace, out: Output) -> int:
    async with JobClient.connect(settings) as client:
        jobs = await client.list_jobs(
            status=args.status,
            older_than=args.older_than,
            newer_than=args.newer_than,
            book_id=args.book_id,
            limit=args.limit,
            oldest_first=args.oldest_first,
        )
    out.jobs(jobs)
    return EXIT_OK


async def cmd_watch(settings: ClientSettings, args: argparse.Namespace, out: Output) -> int:
    count = 1 if args.once else args.count
    async with JobClient.connect(settings) as client:
        printed = 0
        while count is None or printed < count:
            if printed:
                await asyncio.sleep(args.interval)
            stats = await client.stats()
            out.emit({"time": datetime.now(UTC).isoformat(), **stats.to_dict()}, watch_line(stats))
            printed += 1
    return EXIT_OK


async def cmd_stats(settings: ClientSettings, args: argparse.Namespace, out: Output) -> int:
    async with JobClient.connect(settings) as client:
        stats = await client.stats()
    out.stats(stats)
    if stats.queue_error:
        warn(f"cannot read queue depth: {_one(stats.queue_error)}")
        return EXIT_UNAVAILABLE
    return EXIT_OK


# -- repairs -------------------------------------------------------------------------------------


async def cmd_retry_queue_failed(
    settings: ClientSettings, args: argparse.Namespace, out: Output
) -> int:
    async with JobClient.connect(settings) as client:
        result = await client.retry_queue_failed(limit=args.limit)
    out.emit(
        result.to_dict(), f"re-sent {len(result.sent)}, still queue_failed {len(result.failed)}"
    )
    if result.failed:
        warn(f"{len(result.failed)} send(s) failed: {_one(next(iter(result.failed.values())))}")
        return EXIT_UNAVAILABLE
    return EXIT_OK


async def cmd_retry_failed(settings: ClientSettings, args: argparse.Namespace, out: Output) -> int:
    if bool(args.job_ids) == bool(args.all):
        raise ClientConfigError("name the failed jobs to retry, or pass --all (not both)")
    async with JobClient.connect(settings) as client:
        result = await client.retry_failed(
            args.job_ids or None,
            error_contains=args.error_contains,
            older_than=args.older_than,
            limit=args.limit if args.all else max(args.limit, len(args.job_ids)),
        )
    human = [f"re-queued {len(result.sent)}"]
    human += [f"{job_id} skipped: {why}" for job_id, why in result.skipped.items()]
    out.emit(result.to_dict(), "\n".join(human))
    if result.failed:
        warn(
            f"{len(result.failed)} job(s) reset but not queued (queue_failed): "
            f"{_one(next(iter(result.failed.values())))}"
        )
        return EXIT_UNAVAILABLE
    return EXIT_JOB_FAILED if result.skipped else EXIT_OK


async def cmd_redrive_dlq(settings: ClientSettings, args: argparse.Namespace, out: Output) -> int:
    async with JobClient.connect(settings) as client:
        result = await client.redrive_dlq(dlq_url=args.dlq_url, limit=args.limit)
    out.emit(
        result.to_dict(),
        f"moved {result.moved} message(s) from the DLQ, reset "
        f"{len(result.reset)} failed job(s), {result.unknown} without a job",
    )
    if result.failed:
        warn(
            f"{len(result.failed)} message(s) left in the DLQ: "
            f"{_one(next(iter(result.failed.values())))}"
        )
        return EXIT_UNAVAILABLE
    return EXIT_OK


# -- recovery and health -------------------------------------------------------------------------


async def cmd_sweep(settings: ClientSettings, args: argparse.Namespace, out: Output) -> int:
    sweep_settings = SweepSettings.from_env(
        grace_seconds=args.grace,
        pending_after_seconds=args.pending_after,
        max_per_pass=args.max_per_pass,
        max_per_second=args.max_per_second,
        interval_seconds=args.interval,
    )
    queue_name = settings.queue_url.rstrip("/").rsplit("/", 1)[-1]

    def show(report: SweepReport) -> None:
        if args.emf:
            print(json.dumps(report.emf(queue_name)), flush=True)
        else:
            out.emit(report.to_dict(), sweep_line(report))

    async with JobClient.connect(settings) as client:
        if not args.loop:
            report = await client.sweep(sweep_settings)
            show(report)
            if not report.ok:
                warn(
                    f"{len(report.send_failures)} send(s) failed: "
                    f"{_one(next(iter(report.send_failures.values())))}"
                )
                return EXIT_UNAVAILABLE
            return EXIT_OK
        configure_logging("json" if args.emf or args.json else "console", "warning")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await sweep_forever(client, sweep_settings, stop, on_pass=show)
    return EXIT_OK


async def cmd_health(settings: ClientSettings, args: argparse.Namespace, out: Output) -> int:
    # No connection at start (min_size=0): an unreachable database is a failed check, not a crash.
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=0,
        max_size=1,
        timeout=min(args.timeout, settings.connect_timeout),
    )
    try:
        async with JobClient.connect(settings, pool=pool) as client:
            report = await client.check_health(timeout=args.timeout)
    finally:
        pool.terminate()
    out.emit(report.to_dict(), health_text(report))
    return EXIT_OK if report.ok else EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
