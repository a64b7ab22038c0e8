"""In-memory fakes behind worker/ports.py's protocols, for unit tests that start no service.

`FakeQueue` keeps SQS's visibility rules on a clock the test moves (`advance`): a received message
is invisible for its visibility timeout, counts its receives and gets a new receipt handle each
time; batch calls answer per entry and can be made to fail per entry or as a whole.
`FakeJobStore` keeps job rows and makes the compare-and-set transitions of worker/job_table.py,
on the same kind of clock for leases; any of its calls can be made to raise."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from jobcore.jobs import Job, JobStatus
from worker.job_table import Claim, ClaimOutcome, Completion
from worker.settings import Settings

QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs"
_METADATA = {"RequestId": "fake", "HTTPStatusCode": 200, "HTTPHeaders": {}, "RetryAttempts": 0}


def unit_settings(**env: str) -> Settings:
    """Settings for unit tests: nothing they name is ever connected to."""
    return Settings.from_env(
        {"DATABASE_URL": "postgresql://unused/unused", "SQS_QUEUE_URL": QUEUE_URL, **env}
    )


def client_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"fake {code}"}}, operation)


@dataclass
class StoredMessage:
    message_id: str
    body: str
    sent_at: float
    visible_at: float = 0.0
    receive_count: int = 0
    receipt_handle: str = ""  # the latest receive's; earlier ones no longer work


class FakeQueue:
    """The four SQS calls of worker/ports.py's MessageQueue, on one queue."""

    def __init__(self) -> None:
        self.now = 0.0
        self.messages: dict[str, StoredMessage] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.receives = 0  # receive_message calls answered
        # Failure injection: a whole call raises `fail_call[name]` (once), or entries whose
        # message id is in `fail_entries` are answered Failed.
        self.fail_call: dict[str, Exception] = {}
        self.fail_entries: set[str] = set()
        self._handles = itertools.count(1)
        self._changed = asyncio.Event()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._changed.set()

    def send(self, body: str) -> str:
        message_id = str(uuid.uuid4())
        self.messages[message_id] = StoredMessage(message_id, body, sent_at=self.now)
        self._changed.set()
        return message_id

    def visible(self) -> list[str]:
        return [m.message_id for m in self.messages.values() if m.visible_at <= self.now]

    def _raise_if_failing(self, name: str, kwargs: dict[str, Any]) -> None:
        self.calls.append((name, kwargs))
        if name in self.fail_call:
            raise self.fail_call.pop(name)

    def _by_handle(self, receipt_handle: str) -> StoredMessage | None:
        for message in self.messages.values():
            if message.receipt_handle == receipt_handle:
                return message
        return None

    async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self._raise_if_failing("receive_message", kwargs)
        # A long poll waits for a message to become visible; the fake's clock only moves when
        # the test says, so it waits until then (or until the call is cancelled).
        while kwargs.get("WaitTimeSeconds", 0) > 0 and not self.visible():
            self._changed.clear()
            await self._changed.wait()
        self.receives += 1
        limit = kwargs.get("MaxNumberOfMessages", 1)
        timeout = kwargs["VisibilityTimeout"]
        answered = []
        for message_id in self.visible()[:limit]:
            message = self.messages[message_id]
            message.receive_count += 1
            message.visible_at = self.now + timeout
            message.receipt_handle = f"handle-{next(self._handles)}"
            answered.append(
                {
                    "MessageId": message.message_id,
                    "ReceiptHandle": message.receipt_handle,
                    "Body": message.body,
                    "Attributes": {
                        "ApproximateReceiveCount": str(message.receive_count),
                        "SentTimestamp": str(int(message.sent_at * 1000)),
                    },
                }
            )
        response: dict[str, Any] = {"ResponseMetadata": _METADATA}
        if answered:
            response["Messages"] = answered
        return response

    async def change_message_visibility(self, **kwargs: Any) -> dict[str, Any]:
        self._raise_if_failing("change_message_visibility", kwargs)
        message = self._by_handle(kwargs["ReceiptHandle"])
        if message is None:
            raise client_error("ReceiptHandleIsInvalid", "ChangeMessageVisibility")
        message.visible_at = self.now + kwargs["VisibilityTimeout"]
        return {"ResponseMetadata": _METADATA}

    async def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self._raise_if_failing("delete_message_batch", kwargs)

        def delete(message: StoredMessage, entry: Mapping[str, Any]) -> None:
            del self.messages[message.message_id]

        return self._batch(kwargs["Entries"], delete)

    async def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        self._raise_if_failing("change_message_visibility_batch", kwargs)

        def extend(message: StoredMessage, entry: Mapping[str, Any]) -> None:
            message.visible_at = self.now + entry["VisibilityTimeout"]

        return self._batch(kwargs["Entries"], extend)

    def _batch(
        self,
        entries: Sequence[Mapping[str, Any]],
        apply: Callable[[StoredMessage, Mapping[str, Any]], None],
    ) -> dict[str, Any]:
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for entry in entries:
            message = self._by_handle(entry["ReceiptHandle"])
            if message is None or message.message_id in self.fail_entries:
                code = "ReceiptHandleIsInvalid" if message is None else "InternalError"
                failed.append(
                    {"Id": entry["Id"], "SenderFault": message is None, "Code": code,
                     "Message": f"fake {code}"}
                )  # fmt: skip
                continue
            apply(message, entry)
            successful.append({"Id": entry["Id"]})
        return {"Successful": successful, "Failed": failed, "ResponseMetadata": _METADATA}


_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class FakeJobStore:
    """worker/ports.py's JobStorePort over a dict of rows; `leases` holds lease expiry times on
    the store's own clock (`now`, moved by `advance`)."""

    def __init__(self, worker_id: str = "worker-a") -> None:
        self.worker_id = worker_id
        self.now = 0.0
        self.rows: dict[uuid.UUID, Job] = {}
        self.leases: dict[uuid.UUID, float] = {}
        self.fail_call: dict[str, Exception] = {}  # method name -> raised on every call
        self.calls: list[str] = []

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def add(
        self,
        status: JobStatus = JobStatus.PENDING,
        *,
        claimed_by: str | None = None,
        lease_seconds: float | None = None,
        source_bucket: str = "photos",
        cancel_reason: str | None = None,
        error: str | None = None,
    ) -> uuid.UUID:
        job_id = uuid.uuid4()
        self.rows[job_id] = Job(
            id=job_id, book_id=None, source_bucket=source_bucket, source_key="in/a.jpg",
            result_bucket=None, result_key=None, status=status, attempts=0, error=error,
            model=None, claimed_by=claimed_by, created_at=_EPOCH, updated_at=_EPOCH,
            started_at=None, completed_at=None,
            cancel_requested_at=_EPOCH if cancel_reason is not None else None,
            cancel_reason=cancel_reason,
        )  # fmt: skip
        if lease_seconds is not None:
            self.leases[job_id] = self.now + lease_seconds
        return job_id

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail_call:
            raise self.fail_call[name]

    def _live(self, job_id: uuid.UUID) -> bool:
        return self.leases.get(job_id, float("-inf")) >= self.now

    def _held(self, job_id: uuid.UUID) -> Job | None:
        row = self.rows.get(job_id)
        if row is None or row.status != JobStatus.PROCESSING or row.claimed_by != self.worker_id:
            return None
        return row

    def _end(self, row: Job, status: JobStatus, error: str | None) -> JobStatus:
        """A finishing write: `cancelled` with the cancel's reason when one was asked."""
        if row.cancel_requested_at is not None:
            status, error = JobStatus.CANCELLED, row.cancel_reason
        self.rows[row.id] = replace(row, status=status, error=error, completed_at=_EPOCH)
        self.leases.pop(row.id, None)
        return status

    async def claim(self, job_id: uuid.UUID, *, model: str, lease_seconds: float) -> Claim:
        self._enter("claim")
        row = self.rows.get(job_id)
        if row is None:
            return Claim(ClaimOutcome.NOT_FOUND)
        abandoned = row.status == JobStatus.PROCESSING and not self._live(job_id)
        if row.status in (JobStatus.PENDING, JobStatus.QUEUE_FAILED) or (
            abandoned and row.cancel_requested_at is None
        ):
            claimed = replace(
                row, status=JobStatus.PROCESSING, attempts=row.attempts + 1,
                claimed_by=self.worker_id, model=model, started_at=_EPOCH,
            )  # fmt: skip
            self.rows[job_id] = claimed
            self.leases[job_id] = self.now + lease_seconds
            return Claim(ClaimOutcome.CLAIMED, claimed)
        if abandoned:
            self._end(row, JobStatus.CANCELLED, row.cancel_reason)
            return Claim(ClaimOutcome.CANCELLED, self.rows[job_id])
        if row.status.finished:
            return Claim(ClaimOutcome.FINISHED, row)
        return Claim(ClaimOutcome.BUSY, row)

    async def extend_leases(self, job_ids: list[uuid.UUID], lease_seconds: float) -> None:
        self._enter("extend_leases")
        for job_id in job_ids:
            if self._held(job_id) is not None:
                self.leases[job_id] = self.now + lease_seconds

    async def record_model(self, job_id: uuid.UUID, model: str) -> bool:
        self._enter("record_model")
        row = self._held(job_id)
        if row is not None:
            self.rows[job_id] = replace(row, model=model)
        return row is not None

    async def cancel_requested(self, job_id: uuid.UUID) -> str | None:
        self._enter("cancel_requested")
        row = self.rows.get(job_id)
        if row is None or row.cancel_requested_at is None:
            return None
        return row.cancel_reason or "cancelled"

    async def complete(
        self,
        job_id: uuid.UUID,
        result_bucket: str,
        result_key: str,
        outputs: Sequence[Mapping[str, Any]],
        background_used: Mapping[str, Any] | None = None,
    ) -> Completion:
        self._enter("complete")
        row = self._held(job_id)
        if row is None:
            return Completion.GONE if job_id not in self.rows else Completion.LOST
        if row.cancel_requested_at is not None:
            return Completion.CANCEL_REQUESTED
        self.rows[job_id] = replace(
            row, status=JobStatus.COMPLETED, result_bucket=result_bucket, result_key=result_key,
            outputs=[dict(o) for o in outputs], error=None, completed_at=_EPOCH,
            background_used=None if background_used is None else dict(background_used),
        )  # fmt: skip
        self.leases.pop(job_id, None)
        return Completion.COMPLETED

    async def cancel(self, job_id: uuid.UUID) -> bool:
        self._enter("cancel")
        row = self._held(job_id)
        if row is None or row.cancel_requested_at is None:
            return False
        self._end(row, JobStatus.CANCELLED, row.cancel_reason)
        return True

    async def fail(self, job_id: uuid.UUID, reason: str) -> JobStatus | None:
        self._enter("fail")
        row = self._held(job_id)
        return None if row is None else self._end(row, JobStatus.FAILED, reason)

    async def fail_unclaimed(self, job_id: uuid.UUID, reason: str) -> JobStatus | None:
        self._enter("fail_unclaimed")
        row = self.rows.get(job_id)
        if row is None:
            return None
        abandoned = row.status == JobStatus.PROCESSING and not self._live(job_id)
        if row.status not in (JobStatus.PENDING, JobStatus.QUEUE_FAILED) and not abandoned:
            return None
        return self._end(row, JobStatus.FAILED, reason)

    async def release(self, job_id: uuid.UUID, reason: str | None) -> JobStatus | None:
        self._enter("release")
        row = self._held(job_id)
        if row is None:
            return None
        if row.cancel_requested_at is not None:
            return self._end(row, JobStatus.CANCELLED, row.cancel_reason)
        self.rows[job_id] = replace(
            row,
            status=JobStatus.PENDING,
            claimed_by=None,
            error=row.error if reason is None else reason,
        )
        self.leases.pop(job_id, None)
        return JobStatus.PENDING


class FakeS3:
    """The two S3 calls the claim branches make: `get_object` raises `get_error` (the source
    download fails), `delete_object` records what it deleted."""

    def __init__(self, get_error: Exception | None = None) -> None:
        self.get_error = get_error or client_error("InternalError", "GetObject")
        self.deleted: list[tuple[str, str]] = []

    async def get_object(self, **kwargs: Any) -> dict[str, Any]:
        raise self.get_error

    async def delete_object(self, **kwargs: Any) -> dict[str, Any]:
        self.deleted.append((kwargs["Bucket"], kwargs["Key"]))
        return {"ResponseMetadata": _METADATA}
