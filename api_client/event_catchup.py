"""The recovery sweep's event catch-up: with EVENTS_TOPIC_ARN set, each pass publishes the
job-finished events still owed (`event_pending`) SWEEP_GRACE_SECONDS after their job finished:
the worker that finished the job died before publishing, SNS refused it, or the app cancelled a
job before any worker took it (only the sweep publishes those). See jobcore/event_outbox.py."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import structlog

from jobcore.aws import aws_client
from jobcore.event_outbox import EventCatchUp, EventPublisher, catch_up_events

if TYPE_CHECKING:
    from api_client.recovery import SweepSettings
    from api_client.requeue import JobQueue

log = structlog.get_logger(__name__)


async def sweep_events(client: JobQueue, settings: SweepSettings) -> EventCatchUp | None:
    """One catch-up pass; None when events are off (no EVENTS_TOPIC_ARN)."""
    if settings.events_topic_arn is None:
        return None
    async with aws_client("sns", client.settings.aws_options()) as sns:
        result = await catch_up_events(
            client.pool,
            EventPublisher(sns, settings.events_topic_arn),
            grace=timedelta(seconds=settings.grace_seconds),
            limit=settings.max_per_pass,
        )
    if result.published or result.failed:
        log.info("job events caught up", published=len(result.published), failed=len(result.failed))
    return result
