"""Poison message bodies: whatever their size or nesting, each is deleted once, counted as
malformed, logged with a bounded excerpt and no traceback, and never reaches the DLQ."""

from __future__ import annotations

import uuid

import pytest
from structlog.testing import capture_logs

from jobcore.jobs import EXCERPT_CHARS, MalformedMessage, decode_message, encode_message
from tests.conftest import Aws, StartWorker
from tests.helpers import eventually, scrape

POISON_BODIES = {
    "deeply nested": "[" * 100_000,
    "5,000-digit job_id": '{"job_id": ' + "7" * 5_000 + "}",
    "250 KB non-UUID id": '{"job_id": "' + "z" * 250_000 + '"}',
    "nested object": '{"job_id": {"a": [[[[{"b": 1}]]]]}}',
    "job_id null": '{"job_id": null}',
    "NaN job_id": '{"job_id": NaN}',
}


@pytest.mark.parametrize("body", POISON_BODIES.values(), ids=POISON_BODIES.keys())
def test_decoding_refuses_every_poison_body_with_a_bounded_reason(body: str) -> None:
    with pytest.raises(MalformedMessage) as refused:
        decode_message(body)
    assert len(str(refused.value)) < EXCERPT_CHARS + 100


def test_decoding_refuses_bodies_over_the_sqs_limit_and_reads_good_ones() -> None:
    too_big = '{"job_id": "' + str(uuid.uuid4()) + '", "pad": "' + "p" * 300_000 + '"}'
    with pytest.raises(MalformedMessage, match="over the SQS limit"):
        decode_message(too_big)
    job_id = uuid.uuid4()
    assert decode_message(encode_message(job_id)) == job_id
    # Brackets inside strings do not count as nesting.
    assert decode_message(f'{{"job_id": "{job_id}", "note": "[[[[[[[[[["}}') == job_id


async def test_poison_bodies_are_deleted_once_counted_and_kept_out_of_the_dlq(
    start_worker: StartWorker, aws: Aws
) -> None:
    with capture_logs() as logs:
        worker = await start_worker()
        for body in POISON_BODIES.values():
            await aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=body)

        async def all_deleted() -> bool:
            metrics = await scrape(worker.url)
            return metrics.get("image_worker_messages_deleted_total", 0) >= len(POISON_BODIES)

        await eventually(all_deleted, timeout=30)
        metrics = await scrape(worker.url)
        await worker.stop()

    assert metrics["image_worker_malformed_messages_total"] == len(POISON_BODIES)
    assert metrics["image_worker_messages_deleted_total"] == len(POISON_BODIES)
    assert metrics["image_worker_messages_received_total"] == len(POISON_BODIES)
    assert await aws.queue_counts() == (0, 0)
    assert await aws.queue_counts(aws.dlq_url) == (0, 0)
    malformed = [e for e in logs if e["event"] == "malformed message deleted"]
    assert len(malformed) == len(POISON_BODIES)
    for entry in malformed:
        assert len(entry["body"]) < EXCERPT_CHARS + 40
        assert len(entry["reason"]) < EXCERPT_CHARS + 100
    assert not [e for e in logs if "exc_info" in e or e["log_level"] in ("error", "critical")]
