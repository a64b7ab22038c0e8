"""What SQS says about a queue: its dead-letter queue and its depth by state."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

# Queue depth by state, as SQS GetQueueAttributes names it.
QUEUE_DEPTH_ATTRIBUTES = {
    "visible": "ApproximateNumberOfMessages",
    "in_flight": "ApproximateNumberOfMessagesNotVisible",
    "delayed": "ApproximateNumberOfMessagesDelayed",
}

# GetQueueUrl/GetQueueAttributes on a queue that does not exist (JSON and query protocols).
MISSING_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


async def discover_dlq_url(sqs: SQSClient, queue_url: str) -> str | None:
    """The DLQ named by the queue's RedrivePolicy (deadLetterTargetArn), or None without one.
    The ARN names the DLQ's owner: a DLQ in another account is found there, not in ours."""
    response = await sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    target = dlq_target(response.get("Attributes", {}).get("RedrivePolicy"))
    if target is None:
        return None
    found = await sqs.get_queue_url(QueueName=target[1], QueueOwnerAWSAccountId=target[0])
    return found["QueueUrl"]


def dlq_target(policy: str | None) -> tuple[str, str] | None:
    """(account, name) of the DLQ a RedrivePolicy names, or None without one."""
    if not policy:
        return None
    arn = json.loads(policy)["deadLetterTargetArn"]
    *_, account, name = arn.split(":", 5)
    return account, name


async def queue_depth(sqs: SQSClient, queue_url: str) -> dict[str, int]:
    """Messages on the queue by state (the keys of QUEUE_DEPTH_ATTRIBUTES)."""
    response = await sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=list(QUEUE_DEPTH_ATTRIBUTES.values()),  # type: ignore[arg-type]
    )
    return depth_of(response.get("Attributes", {}))


def depth_of(attributes: Mapping[Any, Any]) -> dict[str, int]:
    """GetQueueAttributes' answer as messages by state (the keys of QUEUE_DEPTH_ATTRIBUTES)."""
    return {state: int(attributes.get(name, 0)) for state, name in QUEUE_DEPTH_ATTRIBUTES.items()}
