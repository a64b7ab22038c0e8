"""The job row and the SQS message: the contract shared by the worker and the producer."""

from __future__ import annotations

import enum
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobcore.recipe import Recipe

MESSAGE_VERSION = 1


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    QUEUE_FAILED = "queue_failed"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # by the app; never revived

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class Job:
    id: uuid.UUID
    book_id: str | None
    source_bucket: str
    source_key: str
    result_bucket: str | None
    result_key: str | None
    status: JobStatus
    attempts: int
    error: str | None
    model: str | None
    claimed_by: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    idempotency_key: str | None = None  # the creator's key, when it gave one
    recipe: Recipe | None = None  # None: the worker's DEFAULT_RECIPE
    outputs: list[dict[str, Any]] | None = None  # every object written, once completed
    background_used: dict[str, Any] | None = None  # e.g. {"colour": "#ffffff", "luma": 171.2}
    cancel_requested_at: datetime | None = None  # set while a running job is asked to stop
    cancel_reason: str | None = None

    @classmethod
    def from_record(cls, record: Any) -> Job:
        return cls(
            id=record["id"],
            book_id=record["book_id"],
            source_bucket=record["source_bucket"],
            source_key=record["source_key"],
            result_bucket=record["result_bucket"],
            result_key=record["result_key"],
            status=JobStatus(record["status"]),
            attempts=record["attempts"],
            error=record["error"],
            model=record["model"],
            claimed_by=record["claimed_by"],
            created_at=record["created_at"],
            updated_at=record["updated_at"],
            started_at=record["started_at"],
            completed_at=record["completed_at"],
            idempotency_key=record["idempotency_key"],
            recipe=Recipe.from_json(record["recipe"]) if record["recipe"] is not None else None,
            outputs=_json_column(record["outputs"]),
            background_used=_json_column(record["background_used"]),
            cancel_requested_at=record["cancel_requested_at"],
            cancel_reason=record["cancel_reason"],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "book_id": self.book_id,
            "source": f"s3://{self.source_bucket}/{self.source_key}",
            "result": f"s3://{self.result_bucket}/{self.result_key}" if self.result_key else None,
            "status": self.status.value,
            "attempts": self.attempts,
            "error": self.error,
            "model": self.model,
            "claimed_by": self.claimed_by,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
            "idempotency_key": self.idempotency_key,
            "recipe": self.recipe.to_json() if self.recipe else None,
            "outputs": self.outputs,
            "background_used": self.background_used,
            "cancel_requested_at": (
                self.cancel_requested_at.isoformat() if self.cancel_requested_at else None
            ),
            "cancel_reason": self.cancel_reason,
        }


JOB_COLUMNS = (
    "id, book_id, source_bucket, source_key, result_bucket, result_key, status, attempts, error,"
    " model, claimed_by, created_at, updated_at, started_at, completed_at, idempotency_key,"
    " recipe, outputs, background_used,"
    " cancel_requested_at, cancel_reason"
)


def _json_column(value: Any) -> Any:
    """A jsonb column's value: asyncpg returns text (no codec is set), psycopg the object."""
    return json.loads(value) if isinstance(value, str) else value


class MalformedMessage(ValueError):
    """The message body is not a job pointer; there is no row to fail. The text is bounded: it
    quotes at most an excerpt of the body, whatever the body's size."""


# The module's queues keep aws_sqs_queue's default size limit; SQS refuses larger messages, so a
# larger body did not come through our queue as sent: refused before parsing.
MAX_BODY_BYTES = 262_144
# A job message is one flat object: anything nested deeper is refused before parsing (json.loads
# recurses once per level and raises RecursionError near 1,000).
MAX_BODY_DEPTH = 4
# The longest form uuid.UUID accepts ("urn:uuid:" + 32 hex digits with braces and hyphens).
MAX_JOB_ID_CHARS = 45
EXCERPT_CHARS = 80
_DEPTH_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[{]|[\]}]')


def encode_message(job_id: uuid.UUID) -> str:
    return json.dumps({"job_id": str(job_id), "v": MESSAGE_VERSION})


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text` quoted, cut to `limit` characters, with its full length when cut."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def decode_message(body: str) -> uuid.UUID:
    """The job id of a message body; MalformedMessage for anything else, whatever its size or
    nesting."""
    size = len(body.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY_BYTES:
        raise MalformedMessage(f"body is {size} bytes, over the SQS limit of {MAX_BODY_BYTES}")
    if (depth := _nesting(body)) > MAX_BODY_DEPTH:
        raise MalformedMessage(f"body nests {depth} levels deep, over {MAX_BODY_DEPTH}")
    try:
        # Numbers stay text: int() of a 5,000-digit number raises ValueError (and costs CPU).
        payload = json.loads(body, parse_int=str, parse_float=str, parse_constant=str)
    except json.JSONDecodeError as exc:
        raise MalformedMessage(f"body is not JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage(f"body is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(payload, dict) or "job_id" not in payload:
        raise MalformedMessage('body has no "job_id"')
    job_id = payload["job_id"]
    if not isinstance(job_id, str) or len(job_id) > MAX_JOB_ID_CHARS:
        raise MalformedMessage(f"job_id {excerpt(str(job_id))} is not a UUID")
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise MalformedMessage(f"job_id {excerpt(job_id)} is not a UUID") from None


def _nesting(body: str) -> int:
    """How deep brackets nest outside strings; counted without parsing, in linear time."""
    depth = deepest = 0
    for match in _DEPTH_TOKENS.finditer(body):
        bracket = match.group()
        if bracket in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif bracket in ("]", "}"):
            depth -= 1
    return deepest
