"""The recovery sweep's event catch-up: with EVENTS_TOPIC_ARN set, each pass publishes the
job-finished events still owed (`event_pending`) SWEEP_GRACE_SECONDS after their job finished:
the worker that finished the job died before publishing, SNS refused it, or the app cancelled a
job before any worker took it (only the sweep publishes those). Written once as steps, so both
clients' `sweep` run it (see jobcore/event_outbox.py for the outbox)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from api_client.sending import batch_calls
from api_client.steps import Steps, atomic, rows
from jobcore.event_outbox import (
    CLEAR_PUBLISHED,
    SELECT_OWED,
    EventCatchUp,
    JobEvent,
    publish_entry,
)

if TYPE_CHECKING:
    from api_client.recovery import SweepSettings

log = logging.getLogger("image_worker.producer")


def catch_up_events(options: SweepSettings) -> Steps[EventCatchUp | None]:
    """One catch-up pass; None when events are off (no EVENTS_TOPIC_ARN). The owed rows are
    taken with SKIP LOCKED inside one transaction, so sweeps running at once publish each event
    once; a refused publish leaves its row owed for the next pass."""
    topic = options.events_topic_arn
    if topic is None:
        return None

    def owed() -> Steps[EventCatchUp]:
        records = yield from rows(
            SELECT_OWED, timedelta(seconds=options.grace_seconds), options.max_per_pass
        )
        events = {event.id: event for event in map(JobEvent.from_record, records)}
        outcome = yield from batch_calls(
            "sns",
            "publish_batch",
            list(events.values()),
            entry=publish_entry,
            key=lambda event: event.id,
            verb="publish",
            entries_argument="PublishBatchRequestEntries",
            TopicArn=topic,
        )
        published = [events[job_id] for job_id in outcome.sent]
        if published:
            yield from rows(
                CLEAR_PUBLISHED,
                [event.id for event in published],
                [event.finished_at for event in published],
            )
        return EventCatchUp(published=outcome.sent, failed=outcome.failed)

    result = yield from atomic(owed())
    if result.published or result.failed:
        log.info(
            "job events caught up: %d published, %d failed",
            len(result.published),
            len(result.failed),
        )
    return result
