"""SQS batch calls with per-entry outcomes. A batch call takes at most SQS_BATCH entries; SQS
answers each entry as Successful or Failed, and a call can also fail as a whole (queue gone,
endpoint down); either way every entry ends with an outcome, never silently."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

SQS_BATCH = 10  # the most entries one SQS batch call (or one receive) takes
# The longest visibility timeout SQS accepts (12 hours), for a queue or one ChangeMessageVisibility.
MAX_VISIBILITY_SECONDS = 43200
CALL_ERRORS = (ClientError, BotoCoreError, OSError)

T = TypeVar("T")
E = TypeVar("E")
K = TypeVar("K", bound=Hashable)


@dataclass
class BatchOutcome(Generic[K]):
    sent: list[K] = field(default_factory=list)  # entries SQS accepted
    failed: dict[K, str] = field(default_factory=dict)  # key -> reason

    def merge(self, other: BatchOutcome[K]) -> None:
        self.sent.extend(other.sent)
        self.failed.update(other.failed)


def chunked(items: Sequence[T], size: int = SQS_BATCH) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def call_in_batches(
    items: Sequence[T],
    *,
    entry: Callable[[str, T], E],
    key: Callable[[T], K],
    call: Callable[[list[E]], Awaitable[Mapping[str, Any]]],
    verb: str,
) -> BatchOutcome[K]:
    """Call `call` once per chunk of SQS_BATCH items, with `entry(Id, item)` per item (`Id` is
    the index in the chunk); every item ends as sent or failed, named by `key(item)`."""
    outcome: BatchOutcome[K] = BatchOutcome()
    for chunk in chunked(items):
        keys = [key(item) for item in chunk]
        try:
            response = await call([entry(str(index), item) for index, item in enumerate(chunk)])
        except CALL_ERRORS as exc:
            outcome.merge(BatchOutcome(failed={k: f"{verb} failed: {exc}" for k in keys}))
            continue
        outcome.merge(entry_outcomes(response, keys, verb=verb))
    return outcome


def entry_outcomes(
    response: Mapping[str, Any], keys: Sequence[K], *, verb: str = "send"
) -> BatchOutcome[K]:
    """Map a batch response back to its entries. An entry missing from both lists (which SQS
    should never do) counts as failed: nothing is marked done without proof."""
    outcome: BatchOutcome[K] = BatchOutcome()
    answered: set[int] = set()
    for entry in response.get("Successful", []):
        index = int(entry["Id"])
        answered.add(index)
        outcome.sent.append(keys[index])
    for entry in response.get("Failed", []):
        index = int(entry["Id"])
        answered.add(index)
        code = entry.get("Code", "error")
        outcome.failed[keys[index]] = f"{verb} failed: {code}: {entry.get('Message', '')}".strip()
    for index, key in enumerate(keys):
        if index not in answered:
            outcome.failed[key] = f"{verb} failed: no answer for this entry"
    return outcome
