"""The job row and the SQS message: the contract shared by the worker and the producer."""

from __future__ import annotations

import enum
import json
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
        }


JOB_COLUMNS = (
    "id, book_id, source_bucket, source_key, result_bucket, result_key, status, attempts, error,"
    " model, claimed_by, created_at, updated_at, started_at, completed_at, idempotency_key,"
    " recipe, outputs, background_used"
)


def _json_column(value: Any) -> Any:
    """A jsonb column's value: asyncpg returns text (no codec is set), psycopg the object."""
    return json.loads(value) if isinstance(value, str) else value


class MalformedMessage(ValueError):
    """The message body is not a job pointer; there is no row to fail."""


def encode_message(job_id: uuid.UUID) -> str:
    return json.dumps({"job_id": str(job_id), "v": MESSAGE_VERSION})


def decode_message(body: str) -> uuid.UUID:
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        raise MalformedMessage(f"body is not JSON: {exc.msg}") from exc
    if not isinstance(payload, dict) or "job_id" not in payload:
        raise MalformedMessage('body has no "job_id"')
    try:
        return uuid.UUID(str(payload["job_id"]))
    except ValueError as exc:
        raise MalformedMessage(f"job_id {payload['job_id']!r} is not a UUID") from exc
