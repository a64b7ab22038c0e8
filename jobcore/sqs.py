"""SendMessageBatch with per-entry outcomes: SQS answers each entry as Successful or Failed, and a
call can also fail as a whole (queue gone, endpoint down); either way each entry gets a reason."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from jobcore.jobs import encode_message

SQS_BATCH = 10
K = TypeVar("K")


@dataclass
class SendOutcome(Generic[K]):
    sent: list[K] = field(default_factory=list)
    failed: dict[K, str] = field(default_factory=dict)  # key (a job id) -> reason

    def merge(self, other: SendOutcome[K]) -> None:
        self.sent.extend(other.sent)
        self.failed.update(other.failed)


async def send_batch(
    sqs: Any, queue_url: str, jobs: Sequence[tuple[uuid.UUID, int]]
) -> SendOutcome[uuid.UUID]:
    """Send the pointer message of each (job id, delay seconds), 10 per call."""
    outcome: SendOutcome[uuid.UUID] = SendOutcome()
    for start in range(0, len(jobs), SQS_BATCH):
        chunk = jobs[start : start + SQS_BATCH]
        entries = [
            {"Id": str(index), "MessageBody": encode_message(job_id), "DelaySeconds": delay}
            for index, (job_id, delay) in enumerate(chunk)
        ]
        outcome.merge(await send_entries(sqs, queue_url, entries, [job_id for job_id, _ in chunk]))
    return outcome


async def send_entries(
    sqs: Any, queue_url: str, entries: list[dict[str, Any]], keys: Sequence[K]
) -> SendOutcome[K]:
    """One SendMessageBatch call (at most 10 entries, `Id` = index); `keys[i]` names entry i."""
    try:
        response = await sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    except (ClientError, BotoCoreError, OSError) as exc:
        return SendOutcome(failed={key: f"send failed: {exc}" for key in keys})
    return entry_outcomes(response, keys)


def entry_outcomes(response: dict[str, Any], keys: Sequence[K]) -> SendOutcome[K]:
    """Map a SendMessageBatch response back to its entries. An entry missing from both lists
    (which SQS should never do) counts as failed: nothing is marked sent without proof."""
    outcome: SendOutcome[K] = SendOutcome()
    answered: set[int] = set()
    for entry in response.get("Successful", []):
        index = int(entry["Id"])
        answered.add(index)
        outcome.sent.append(keys[index])
    for entry in response.get("Failed", []):
        index = int(entry["Id"])
        answered.add(index)
        code = entry.get("Code", "error")
        outcome.failed[keys[index]] = f"send failed: {code}: {entry.get('Message', '')}".strip()
    for index, key in enumerate(keys):
        if index not in answered:
            outcome.failed[key] = "send failed: no answer for this entry"
    return outcome
