"""What `image-jobs` prints: human text by default, JSON for scripts, a one-line progress counter
on stderr, and the one line (and exit code) that an error becomes."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

import asyncpg
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from api_client.admin import QueueDepth, QueueStats
from api_client.errors import ClientConfigError, JobNotFound, JobWaitTimeout
from api_client.health import HealthReport
from api_client.recovery import SweepReport
from api_client.settings import ClientSettings
from jobcore.jobs import Job, JobStatus
from jobcore.queues import MISSING_QUEUE_CODES
from jobcore.s3_errors import MISSING_BUCKET_CODES, MISSING_OBJECT_CODES, error_code

EXIT_OK = 0
EXIT_JOB_FAILED = 1  # a job failed, timed out, or does not exist
EXIT_USAGE = 2  # bad arguments or settings
EXIT_UNAVAILABLE = 3  # the database or SQS/S3 cannot be reached (or refused the request)

AWS_NOT_FOUND = MISSING_QUEUE_CODES | MISSING_OBJECT_CODES | MISSING_BUCKET_CODES


class Output:
    def __init__(self, as_json: bool, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stream = stream or sys.stdout

    def emit(self, payload: Any, human: str) -> None:
        print(
            json.dumps(payload, default=str) if self.as_json else human,
            file=self.stream,
            flush=True,
        )

    def job(self, job: Job) -> None:
        self.emit(job.to_dict(), job_detail(job))

    def jobs(self, jobs: Sequence[Job]) -> None:
        self.emit([job.to_dict() for job in jobs], job_table(jobs))

    def stats(self, stats: QueueStats) -> None:
        self.emit(stats.to_dict(), stats_text(stats))


def warn(message: str) -> None:
    print(f"image-jobs: {message}", file=sys.stderr, flush=True)


class Progress:
    """`inject: 12/40 uploaded` rewritten in place on stderr."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total = total
        self.label = label
        self.enabled = enabled
        self.done = 0

    def step(self, count: int = 1) -> None:
        self.done += count
        if self.enabled:
            sys.stderr.write(f"\rinject: {self.done}/{self.total} {self.label}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()


def age(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "-"
    return duration((now or datetime.now(UTC)) - moment)


def duration(delta: Any) -> str:
    seconds = max(0, int(delta.total_seconds() if hasattr(delta, "total_seconds") else delta))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def job_detail(job: Job) -> str:
    data = job.to_dict()
    rows = [
        ("id", data["id"]),
        ("status", data["status"]),
        ("book_id", data["book_id"]),
        ("source", data["source"]),
        ("result", data["result"]),
        ("attempts", data["attempts"]),
        ("error", data["error"]),
        ("model", data["model"]),
        ("claimed_by", data["claimed_by"]),
        ("created", f"{data['created_at']} ({age(job.created_at)} ago)"),
        ("updated", data["updated_at"]),
        ("started", data["started_at"]),
        ("completed", data["completed_at"]),
    ]
    return "\n".join(f"{name:<11} {'-' if value is None else value}" for name, value in rows)


def job_table(jobs: Sequence[Job]) -> str:
    if not jobs:
        return "no jobs"
    now = datetime.now(UTC)
    lines = [f"{'ID':<36}  {'STATUS':<12}  {'TRIES':>5}  {'AGE':>7}  SOURCE / ERROR"]
    for job in jobs:
        detail = f"s3://{job.source_bucket}/{job.source_key}"
        if job.error:
            detail += f"  {_one_line(job.error, 80)}"
        lines.append(
            f"{job.id!s:<36}  {job.status.value:<12}  {job.attempts:>5}  "
            f"{age(job.created_at, now):>7}  {detail}"
        )
    return "\n".join(lines)


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def counts_text(counts: dict[str, int]) -> str:
    return "  ".join(f"{status.value}={counts.get(status.value, 0)}" for status in JobStatus)


def depth_text(depth: QueueDepth | None) -> str:
    if depth is None:
        return "?"
    return f"visible={depth.visible} in_flight={depth.in_flight} delayed={depth.delayed}"


def stats_text(stats: QueueStats) -> str:
    oldest = (
        "-"
        if stats.oldest_pending_age_seconds is None
        else (duration(stats.oldest_pending_age_seconds))
    )
    lines = [
        f"jobs            {counts_text(stats.counts)}",
        f"oldest pending  {oldest}",
        f"queue           {depth_text(stats.queue)}",
        f"dlq             {depth_text(stats.dlq) if stats.dlq else 'none'}",
    ]
    if stats.queue_error:
        lines[2] = f"queue           unavailable ({_one_line(stats.queue_error, 100)})"
        lines[3] = "dlq             unavailable"
    return "\n".join(lines)


def watch_line(stats: QueueStats) -> str:
    now = datetime.now().strftime("%H:%M:%S")
    queue = stats.queue
    dlq = stats.dlq
    queue_text = "queue=?" if queue is None else f"queue={queue.visible}+{queue.in_flight}"
    dlq_text = "dlq=?" if dlq is None else f"dlq={dlq.visible}"
    return f"{now}  {counts_text(stats.counts)}  {queue_text}  {dlq_text}"


def sweep_line(report: SweepReport) -> str:
    backlog = report.backlog
    left = ""
    if backlog is not None:
        oldest = backlog.oldest_queue_failed_age_seconds
        left = (
            f", left: queue_failed={backlog.queue_failed} "
            f"(oldest {'-' if oldest is None else duration(oldest)}) "
            f"stale pending={backlog.stale_pending}"
        )
    missing = "?" if report.missing_messages is None else report.missing_messages
    return (
        f"re-sent {len(report.queue_failed_sent)} queue_failed, {len(report.pending_resent)} "
        f"pending (queue missing {missing}), {len(report.send_failures)} send(s) failed{left}"
    )


def health_text(report: HealthReport) -> str:
    lines = [
        f"{check.name:<14} {'ok' if check.ok else 'FAILED':<7} "
        f"{check.latency_seconds * 1000:8.1f} ms  {_one_line(check.detail, 120)}"
        for check in report.checks
    ]
    lines.append("healthy" if report.ok else "NOT healthy")
    return "\n".join(lines)


def describe_error(exc: BaseException, settings: ClientSettings | None) -> tuple[int, str]:
    """The exit code and the one line an error becomes."""
    if isinstance(exc, ClientConfigError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, JobNotFound | JobWaitTimeout):
        return EXIT_JOB_FAILED, str(exc)
    if isinstance(exc, asyncpg.UndefinedTableError):
        return EXIT_USAGE, f"the database has no job table (run `image-worker migrate`): {exc}"
    database = _where(settings.database_url) if settings else "the database"
    if isinstance(exc, asyncpg.PostgresError):
        return EXIT_UNAVAILABLE, f"the database at {database} refused: {_one_line(str(exc), 200)}"
    if isinstance(exc, NoCredentialsError):
        return EXIT_USAGE, "no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
    endpoint = (settings.aws_endpoint_url if settings else None) or "AWS"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error_code(exc)
        message = f"{exc.operation_name}: {code}: {error.get('Message') or ''}".rstrip(": ")
        if code in AWS_NOT_FOUND:
            return EXIT_USAGE, f"not found at {endpoint}: {message}"
        return EXIT_UNAVAILABLE, f"{endpoint} refused the request: {message}"
    if isinstance(exc, BotoCoreError):
        return EXIT_UNAVAILABLE, f"cannot reach SQS/S3 at {endpoint}: {_one_line(str(exc), 200)}"
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        detail = _one_line(str(exc) or type(exc).__name__, 200)
        return EXIT_UNAVAILABLE, f"cannot reach the database at {database}: {detail}"
    raise exc


def _where(url: str) -> str:
    """host:port/dbname of a URL, never its password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the configured URL"
    return f"{host}{port}{parts.path}"
