"""What SQS says about a queue: its dead-letter queue and its depth by state."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

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
    policy = response.get("Attributes", {}).get("RedrivePolicy")
    if not policy:
        return None
    arn = json.loads(policy)["deadLetterTargetArn"]
    *_, account, name = arn.split(":", 5)
    found = await sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)
    return found["QueueUrl"]


async def queue_depth(sqs: SQSClient, queue_url: str) -> dict[str, int]:
    """Messages on the queue by state (the keys of QUEUE_DEPTH_ATTRIBUTES)."""
    response = await sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=list(QUEUE_DEPTH_ATTRIBUTES.values()),  # type: ignore[arg-type]
    )
    attributes = response.get("Attributes", {})
    return {
        state: int(attributes.get(name, 0))  # type: ignore[call-overload]
        for state, name in QUEUE_DEPTH_ATTRIBUTES.items()
    }
