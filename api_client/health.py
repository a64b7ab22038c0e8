"""Health of what the producer depends on and of the workers, for an admin endpoint or
`image-jobs health`: PostgreSQL (and its job table), the queue (GetQueueUrl + GetQueueAttributes,
the permissions a health check needs besides SendMessage), the dead-letter queue, the source
bucket (HeadBucket), whether jobs are being taken (the oldest `pending` job's age) and, when an
ECS service is configured (ECS_CLUSTER and ECS_SERVICE), its running and desired task counts
(ecs:DescribeServices). Each check is bounded by `timeout` (the async client runs them
concurrently, the sync one on a thread each); a check never raises: its failure is a reason in
the report, in the result type and words of every check runner (`jobcore.checks`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from api_client.admin import Queues, count_jobs, queue_depth
from api_client.settings import ClientSettings
from api_client.steps import Steps, call, rows
from jobcore.checks import CheckResult, describe_error
from jobcore.jobs import JobStatus

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class WorkerCounts:
    """The ECS service's task counts (DescribeServices)."""

    cluster: str
    service: str
    status: str  # ACTIVE, DRAINING, INACTIVE
    running: int
    desired: int
    pending: int


@dataclass(slots=True)
class HealthReport:
    checks: list[CheckResult]
    oldest_pending_age_seconds: float | None = None  # None: no pending job (or not readable)
    workers: WorkerCounts | None = None  # None: no ECS service configured (or not readable)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [asdict(check) for check in self.checks],
            "oldest_pending_age_seconds": self.oldest_pending_age_seconds,
            "workers": asdict(self.workers) if self.workers else None,
        }


Check = Callable[[HealthReport], Steps[str]]


def health_checks(settings: ClientSettings, queues: Queues) -> list[tuple[str, Check]]:
    """The checks, by name; each writes what it measures into the report and returns its
    detail line."""
    checks: list[tuple[str, Check]] = [
        ("database", lambda _: _database()),
        ("queue", lambda _: _queue(settings.queue_url)),
        ("dlq", lambda _: _dlq(queues)),
        ("source_bucket", lambda _: _bucket(settings)),
        ("pending", _pending),
    ]
    if settings.ecs_cluster and settings.ecs_service:
        cluster, service = settings.ecs_cluster, settings.ecs_service
        checks.append(("workers", lambda report: _workers(report, cluster, service)))
    return checks


def clock() -> float:
    return time.perf_counter()


def timed(name: str, started: float, detail: str | None, error: BaseException | None,
          limit: float) -> CheckResult:  # fmt: skip
    """One check's result from its outcome: a detail line, or the error (a TimeoutError is the
    bound running out)."""
    latency = round(time.perf_counter() - started, 6)
    if error is None:
        return CheckResult(name, True, latency, detail or "")
    if isinstance(error, TimeoutError):
        return CheckResult(name, False, latency, f"timed out after {limit:g}s")
    return CheckResult(name, False, latency, describe_error(error))


DATABASE_CHECK = "SELECT to_regclass('image_processing_jobs') IS NOT NULL AS found"


def _database() -> Steps[str]:
    (found,) = yield from rows(DATABASE_CHECK)
    if not found["found"]:
        raise LookupError("no image_processing_jobs table (run `image-worker migrate`)")
    return "job table reachable"


def _queue(queue_url: str) -> Steps[str]:
    """GetQueueUrl by the queue's name (and owner) answers that the queue exists and this role may
    look it up; GetQueueAttributes that it may be read."""
    path = urlsplit(queue_url).path.strip("/").split("/")
    kwargs: dict[str, str] = {"QueueName": path[-1]}
    if len(path) >= 2 and path[-2].isdigit():
        kwargs["QueueOwnerAWSAccountId"] = path[-2]
    found = yield from call("sqs", "get_queue_url", **kwargs)
    depth = yield from queue_depth(found["QueueUrl"])
    return " ".join(f"{state}={count}" for state, count in depth.items())


def _dlq(queues: Queues) -> Steps[str]:
    url = yield from queues.dlq_url()
    if url is None:
        raise LookupError("no DLQ: the queue has no RedrivePolicy and SQS_DLQ_URL is unset")
    return (yield from _queue(url))


def _bucket(settings: ClientSettings) -> Steps[str]:
    if not settings.source_bucket:
        raise LookupError("no source bucket: set SOURCE_BUCKET")
    yield from call("s3", "head_bucket", Bucket=settings.source_bucket)
    return f"s3://{settings.source_bucket} reachable"


def _pending(report: HealthReport) -> Steps[str]:
    """Whether jobs are being taken: the oldest `pending` job's age (informational: a backlog
    waiting for the fleet to scale up from zero is not a fault)."""
    jobs = yield from count_jobs((JobStatus.PENDING,))
    report.oldest_pending_age_seconds = jobs.oldest_pending_age_seconds
    age = jobs.oldest_pending_age_seconds
    waiting = jobs.counts[JobStatus.PENDING.value]
    return "no pending job" if age is None else f"{waiting} pending, oldest {age:.0f}s"


def _workers(report: HealthReport, cluster: str, service: str) -> Steps[str]:
    """The worker service exists and is ACTIVE; its running and desired counts."""
    response = yield from call("ecs", "describe_services", cluster=cluster, services=[service])
    found = response.get("services", [])
    if not found:
        reasons = [f.get("reason", "?") for f in response.get("failures", [])]
        raise LookupError(f"no ECS service {service} in {cluster}: {', '.join(reasons) or '?'}")
    data = found[0]
    counts = WorkerCounts(
        cluster,
        service,
        data.get("status", "?"),
        int(data.get("runningCount", 0)),
        int(data.get("desiredCount", 0)),
        int(data.get("pendingCount", 0)),
    )
    report.workers = counts
    detail = f"{counts.status} running={counts.running} desired={counts.desired}"
    if counts.status != "ACTIVE":
        raise LookupError(f"ECS service {service} is {detail}")
    return detail
