"""The PostgreSQL NOTIFY that every status change of a job row emits (migration 0005's trigger):
channel `JOBS_CHANNEL`, payload `{"id": "<uuid>", "status": "<status>", "book_id": <text|null>}`.

A listener (`LISTEN image_jobs`) hears a change only after its transaction commits. Notices are
not stored: one missed while no connection listens is gone, so a listener re-reads the rows it
waits for after (re)connecting."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from jobcore.jobs import JobStatus

JOBS_CHANNEL = "image_jobs"


class MalformedNotice(ValueError):
    """A payload on JOBS_CHANNEL that is not a job notice (someone else's NOTIFY)."""


@dataclass(frozen=True, slots=True)
class JobNotice:
    id: uuid.UUID
    status: JobStatus
    book_id: str | None  # None also when the book_id is over 4000 bytes (the row has it)

    @classmethod
    def parse(cls, payload: str) -> JobNotice:
        try:
            data = json.loads(payload)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            book_id = data.get("book_id")
            if book_id is not None and not isinstance(book_id, str):
                raise TypeError("book_id is not text")
            return cls(uuid.UUID(str(data["id"])), JobStatus(data["status"]), book_id)
        except (ValueError, TypeError, KeyError) as exc:
            raise MalformedNotice(f"not a job notice ({exc}): {payload[:200]!r}") from None
