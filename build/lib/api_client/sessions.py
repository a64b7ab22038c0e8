"""A SQLAlchemy session as the caller's transaction, for both clients: the jobs written in it are
sent from its `after_commit` event (before the caller's `commit()` returns) and forgotten on
`after_rollback`. A failed send never raises into the commit: the rows stay `queue_failed` for
the sweep."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from api_client.creation import BatchCore
from jobcore.jobs import Job

log = logging.getLogger("image_worker.producer")

PENDING_SENDS = "image_jobs.pending_sends"  # Session.info key: batches to send after its commit

Send = Callable[[BatchCore], dict[uuid.UUID, Job]]


def send_on_commit(session: Any, core: BatchCore, send: Send) -> None:
    """`session`: a sync `Session` (an AsyncSession's `sync_session`)."""
    from sqlalchemy import event

    pending: list[tuple[Send, BatchCore]] | None = session.info.get(PENDING_SENDS)
    if pending is None:
        pending = session.info[PENDING_SENDS] = []
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_rollback", _after_rollback)
    pending.append((send, core))


def _after_commit(session: Any) -> None:
    for send, core in session.info.pop(PENDING_SENDS, []):
        try:
            core.settle(send(core))
        except Exception as exc:
            log.error("send after commit failed; jobs stay queue_failed: %s",
                      ", ".join(str(c.job.id) for c in core.created), exc_info=exc)  # fmt: skip
    session.info[PENDING_SENDS] = []


def _after_rollback(session: Any) -> None:
    session.info[PENDING_SENDS] = []
