"""Automatic recovery of jobs whose message is not on the queue, with no operator.

One pass (`sweep`) does two things, each row under `SELECT ... FOR UPDATE SKIP LOCKED` (through
`admin.send_and_mark_pending`, the same path as `image-jobs retry-queue-failed`), so any number of
sweepers can run at once and each row is sent by one of them:

1. `queue_failed` rows untouched for the grace period (SWEEP_GRACE_SECONDS, default 60 s) are sent
   and marked `pending` before commit. The grace period covers a producer that wrote the row in
   its caller's transaction and sends right after the commit; a failed send touches `updated_at`
   again, so a queue that is still down is tried once per grace period per row, not in a loop.
2. `pending` rows untouched for SWEEP_PENDING_AFTER_SECONDS (default 900 s: well above the
   worker's visibility timeout and backoff bounds and SQS's 900 s maximum message delay) may have
   lost their message (deleted by hand, past retention). A legitimate backlog of hours looks the
   same from the table, so the sweep re-sends at most as many of them as the queue is missing:
   (pending + processing rows) - (visible + in-flight + delayed messages). While the queue holds a
   message for every open row, nothing is re-sent; a re-sent row's `updated_at` is touched, so it
   is not sent again for another threshold. A duplicate is harmless (claims are compare-and-set).

Both are rate-limited together (SWEEP_MAX_PER_PASS rows a pass, SWEEP_MAX_PER_SECOND messages a
second). Where it runs: `image-jobs sweep` (one pass; a scheduled task in AWS, see
terraform/recovery.tf) or `image-jobs sweep --loop` / `sweep_forever` (hosts without a
scheduler, and the local stack)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import asyncpg

from api_client.admin import Requeued, count_jobs, queue_depth, send_and_mark_pending
from api_client.errors import ClientConfigError
from api_client.event_catchup import catch_up_events
from api_client.settings import ClientSettings, config_error
from api_client.steps import Steps, rows
from jobcore.env import EnvReader
from jobcore.event_outbox import EventCatchUp
from jobcore.jobs import JobStatus
from jobcore.recovery_queries import UNSENT_BACKLOG, UnsentBacklog, backlog_of
from jobcore.sqs import CALL_ERRORS

log = logging.getLogger("image_worker.producer")

EMF_NAMESPACE = "ImageWorker/Recovery"
# What a failed pass of the loop may raise; anything else is a bug and stops the loop.
PASS_ERRORS = (*CALL_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


@dataclass(frozen=True, slots=True)
class SweepSettings:
    grace_seconds: float = 60.0
    pending_after_seconds: float = 900.0
    max_per_pass: int = 500
    max_per_second: float = 50.0
    interval_seconds: float = 60.0  # between passes of the loop
    events_topic_arn: str | None = None  # EVENTS_TOPIC_ARN: publish owed job-finished events

    def __post_init__(self) -> None:
        for name, value in (
            ("SWEEP_GRACE_SECONDS", self.grace_seconds),
            ("SWEEP_PENDING_AFTER_SECONDS", self.pending_after_seconds),
            ("SWEEP_MAX_PER_PASS", self.max_per_pass),
            ("SWEEP_MAX_PER_SECOND", self.max_per_second),
            ("SWEEP_INTERVAL_SECONDS", self.interval_seconds),
        ):
            if not value > 0:
                raise ClientConfigError(f"{name} must be positive, got {value!r}")
        if self.pending_after_seconds <= self.grace_seconds:
            raise ClientConfigError(
                f"SWEEP_PENDING_AFTER_SECONDS ({self.pending_after_seconds:g}) must exceed "
                f"SWEEP_GRACE_SECONDS ({self.grace_seconds:g})"
            )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: float | None
    ) -> SweepSettings:
        """The SWEEP_* variables, then the non-None `overrides` (command-line options)."""
        reader = EnvReader(environ)
        default = cls()
        values: dict[str, Any] = {
            "grace_seconds": reader.duration("SWEEP_GRACE_SECONDS", default.grace_seconds, above=0),
            "pending_after_seconds": reader.duration(
                "SWEEP_PENDING_AFTER_SECONDS", default.pending_after_seconds, above=0
            ),
            "max_per_pass": reader.integer("SWEEP_MAX_PER_PASS", default.max_per_pass, low=1),
            "max_per_second": reader.number(
                "SWEEP_MAX_PER_SECOND", default.max_per_second, above=0
            ),
            "interval_seconds": reader.duration(
                "SWEEP_INTERVAL_SECONDS", default.interval_seconds, above=0
            ),
            "events_topic_arn": reader.optional("EVENTS_TOPIC_ARN", prefix=("arn:",)),
        }
        reader.check(config_error)
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    @property
    def pass_timeout_seconds(self) -> float:
        """A pass sends at most max_per_pass messages at max_per_second, plus slack for calls."""
        return self.max_per_pass / self.max_per_second + 120.0


class Pacer:
    """A rate limit across batches: the first batch goes at once, each next one waits until the
    messages already sent fit `per_second`. Calling it says how long to wait first."""

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self._next = 0.0

    def __call__(self, count: int) -> float:
        now = time.monotonic()
        wait = max(0.0, self._next - now)
        self._next = max(now, self._next) + count / self.per_second
        return wait


@dataclass
class SweepReport:
    """What one pass did, and what is left for the next."""

    queue_failed_sent: list[uuid.UUID] = field(default_factory=list)
    pending_resent: list[uuid.UUID] = field(default_factory=list)
    send_failures: dict[uuid.UUID, str] = field(default_factory=dict)  # rows left queue_failed
    missing_messages: int | None = None  # None: the queue could not be read, or was not asked
    backlog: UnsentBacklog | None = None  # after the pass
    events: EventCatchUp | None = None  # None: events are off
    duration_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.send_failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue_failed_sent": [str(i) for i in self.queue_failed_sent],
            "pending_resent": [str(i) for i in self.pending_resent],
            "send_failures": {str(k): v for k, v in self.send_failures.items()},
            "missing_messages": self.missing_messages,
            "backlog": asdict(self.backlog) if self.backlog else None,
            "events": self.events.to_dict() if self.events else None,
            "duration_seconds": round(self.duration_seconds, 3),
        }

    def metrics(self) -> dict[str, tuple[float, str]]:
        """name -> (value, CloudWatch unit): the counts the scheduled task reports."""
        backlog = self.backlog
        values: dict[str, tuple[float, str]] = {
            "SweepPasses": (1, "Count"),
            "QueueFailedSent": (len(self.queue_failed_sent), "Count"),
            "PendingResent": (len(self.pending_resent), "Count"),
            "SendFailures": (len(self.send_failures), "Count"),
        }
        if self.events is not None:
            values["EventsCaughtUp"] = (len(self.events.published), "Count")
            values["EventPublishFailures"] = (len(self.events.failed), "Count")
        if backlog is not None:
            values["QueueFailedRows"] = (backlog.queue_failed, "Count")
            values["OldestQueueFailedAgeSeconds"] = (
                backlog.oldest_queue_failed_age_seconds or 0.0,
                "Seconds",
            )
            values["StalePendingRows"] = (backlog.stale_pending, "Count")
            values["OldestPendingIdleSeconds"] = (
                backlog.oldest_pending_idle_seconds or 0.0,
                "Seconds",
            )
        return values

    def emf(self, queue_name: str, *, timestamp_ms: int | None = None) -> dict[str, Any]:
        """A CloudWatch Embedded Metric Format document: printed as one JSON line by a task that
        logs through the awslogs driver, CloudWatch Logs turns it into metrics in
        EMF_NAMESPACE with the dimension QueueName, with no CloudWatch API call."""
        values = self.metrics()
        return {
            "_aws": {
                "Timestamp": timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": EMF_NAMESPACE,
                        "Dimensions": [["QueueName"]],
                        "Metrics": [
                            {"Name": name, "Unit": unit} for name, (_, unit) in values.items()
                        ],
                    }
                ],
            },
            "QueueName": queue_name,
            **{name: value for name, (value, _) in values.items()},
            "event": "recovery sweep",
        }


def missing_messages(settings: ClientSettings) -> Steps[int | None]:
    """How many open rows have no message on the queue, estimated from SQS's approximate counts:
    every pending or processing row should have one (visible, in flight, or delayed)."""
    try:
        depth = yield from queue_depth(settings.queue_url)
    except CALL_ERRORS as exc:
        log.warning("queue depth unavailable; stale pending rows left for the next pass: %s", exc)
        return None
    jobs = yield from count_jobs((JobStatus.PENDING, JobStatus.PROCESSING))
    return max(0, int(sum(jobs.counts.values())) - sum(depth.values()))


def sweep(
    settings: ClientSettings, sweep_settings: SweepSettings | None = None
) -> Steps[SweepReport]:
    """One recovery pass (see the module's docstring). Send failures are reported, not raised; a
    database that cannot be reached raises."""
    options = sweep_settings or SweepSettings()
    started = time.monotonic()
    pace = Pacer(options.max_per_second)
    report = SweepReport()
    sent = yield from send_and_mark_pending(
        settings,
        None,
        limit=options.max_per_pass,
        idle_for=timedelta(seconds=options.grace_seconds),
        pace=pace,
    )
    _merge(report, sent, report.queue_failed_sent)
    budget = options.max_per_pass - len(sent.sent) - len(sent.failed)
    if budget > 0 and not sent.failed:  # a failed send: the queue is down, leave the rest be
        report.missing_messages = yield from missing_messages(settings)
        if report.missing_messages:
            resent = yield from send_and_mark_pending(
                settings,
                None,
                limit=min(budget, report.missing_messages),
                status=JobStatus.PENDING,
                idle_for=timedelta(seconds=options.pending_after_seconds),
                pace=pace,
            )
            _merge(report, resent, report.pending_resent)
    (found,) = yield from rows(UNSENT_BACKLOG, timedelta(seconds=options.pending_after_seconds))
    report.backlog = backlog_of(found)
    report.events = yield from catch_up_events(options)
    report.duration_seconds = time.monotonic() - started
    acted = report.queue_failed_sent or report.pending_resent or report.send_failures
    log.log(
        logging.INFO if acted else logging.DEBUG,
        "recovery sweep: queue_failed sent %d, pending re-sent %d, send failures %d,"
        " queue_failed left %d",
        len(report.queue_failed_sent),
        len(report.pending_resent),
        len(report.send_failures),
        report.backlog.queue_failed,
    )
    return report


class Sweeper(Protocol):
    """What `sweep_forever` needs: a `JobClient`."""

    async def sweep(self, settings: SweepSettings | None = None) -> SweepReport: ...


def _merge(report: SweepReport, requeued: Requeued, into: list[uuid.UUID]) -> None:
    into.extend(requeued.sent)
    report.send_failures.update(requeued.failed)


async def sweep_forever(
    client: Sweeper,
    settings: SweepSettings,
    stop: asyncio.Event,
    *,
    on_pass: Callable[[SweepReport], None] | None = None,
) -> None:
    """Sweep every `settings.interval_seconds` until `stop` is set. A pass that fails (database
    or SQS unreachable) or runs past its time bound is logged and the next one runs on time."""
    while not stop.is_set():
        try:
            async with asyncio.timeout(settings.pass_timeout_seconds):
                report = await client.sweep(settings)
        except PASS_ERRORS as exc:
            log.warning("recovery sweep failed; trying again next interval: %s",
                        str(exc) or type(exc).__name__)  # fmt: skip
        else:
            if on_pass is not None:
                on_pass(report)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.interval_seconds)
