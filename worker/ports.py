"""The seams the consumer and the pipeline depend on: the queue calls the consumer makes and the
job-store transitions the pipeline, its cancel handling and the heartbeat make. The real adapters
(the aioboto3 SQS client, worker/job_table.py's `JobStore`) satisfy them structurally, which
mypy checks where worker/app.py wires them in; tests/fakes.py holds in-memory ones."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Unpack

from jobcore.jobs import JobStatus
from worker.job_table import Claim, Completion

if TYPE_CHECKING:
    from types_aiobotocore_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestTypeDef,
        ChangeMessageVisibilityBatchResultTypeDef,
        ChangeMessageVisibilityRequestTypeDef,
        DeleteMessageBatchRequestTypeDef,
        DeleteMessageBatchResultTypeDef,
        EmptyResponseMetadataTypeDef,
        ReceiveMessageRequestTypeDef,
        ReceiveMessageResultTypeDef,
    )


class MessageQueue(Protocol):
    """The SQS calls the consumer, its visibility heartbeat and its delete batcher make."""

    async def receive_message(
        self, **kwargs: Unpack[ReceiveMessageRequestTypeDef]
    ) -> ReceiveMessageResultTypeDef: ...

    async def delete_message_batch(
        self, **kwargs: Unpack[DeleteMessageBatchRequestTypeDef]
    ) -> DeleteMessageBatchResultTypeDef: ...

    async def change_message_visibility(
        self, **kwargs: Unpack[ChangeMessageVisibilityRequestTypeDef]
    ) -> EmptyResponseMetadataTypeDef: ...

    async def change_message_visibility_batch(
        self, **kwargs: Unpack[ChangeMessageVisibilityBatchRequestTypeDef]
    ) -> ChangeMessageVisibilityBatchResultTypeDef: ...


class JobStorePort(Protocol):
    """The job-row transitions a worker makes, each a compare-and-set (see worker/job_table.py
    for what each one may change and when it refuses)."""

    async def claim(self, job_id: uuid.UUID, *, model: str, lease_seconds: float) -> Claim: ...

    async def extend_leases(self, job_ids: list[uuid.UUID], lease_seconds: float) -> None: ...

    async def record_model(self, job_id: uuid.UUID, model: str) -> bool: ...

    async def cancel_requested(self, job_id: uuid.UUID) -> str | None: ...

    async def complete(
        self,
        job_id: uuid.UUID,
        result_bucket: str,
        result_key: str,
        outputs: Sequence[Mapping[str, Any]],
        background_used: Mapping[str, Any] | None = None,
    ) -> Completion: ...

    async def cancel(self, job_id: uuid.UUID) -> bool: ...

    async def fail(self, job_id: uuid.UUID, reason: str) -> JobStatus | None: ...

    async def fail_unclaimed(self, job_id: uuid.UUID, reason: str) -> JobStatus | None: ...

    async def release(self, job_id: uuid.UUID, reason: str | None) -> JobStatus | None: ...
