"""`image-jobs` run as a real console script in a subprocess, against PostgreSQL and moto: its
human and --json output, and the exit codes scripts rely on (0 ok, 1 a job failed or is unknown,
2 bad arguments or settings, 3 a service cannot be reached)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from api_client.client import JobClient
from jobcore.jobs import decode_message
from tests.cli_runs import Result, run
from tests.conftest import Aws
from tests.helpers import unused_port


@pytest.fixture
def cli_env(database_url: str, aws: Aws) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "SQS_QUEUE_URL": aws.queue_url,
        "AWS_ENDPOINT_URL": aws.endpoint,
        "AWS_REGION": "us-east-1",
        "SOURCE_BUCKET": aws.bucket,
        "AWS_MAX_ATTEMPTS": "1",
        "CLIENT_CONNECT_TIMEOUT_SECONDS": "3",
    }


def one_clear_line(result: Result, *fragments: str) -> str:
    """stderr is exactly one line, starting with the program name, with no traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("image-jobs"), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


async def insert_job(
    db: asyncpg.Pool, status: str, *, error: str | None = None, age: timedelta = timedelta(0)
) -> uuid.UUID:
    job_id = uuid.uuid4()
    await db.execute(
        """INSERT INTO image_processing_jobs
               (id, source_bucket, source_key, status, error, attempts, created_at,
                result_bucket, result_key)
           VALUES ($1, 'b', 'sources/x.jpg', $2, $3, 2, now() - $4::interval,
                   CASE WHEN $2 = 'completed' THEN 'b' END,
                   CASE WHEN $2 = 'completed' THEN 'cutouts/x.png' END)""",
        job_id,
        status,
        error,
        age,
    )
    return job_id


async def queued(aws: Aws, url: str | None = None) -> list[str]:
    """Bodies of every visible message (left invisible)."""
    return await aws.receive_all(url)


# -- usage and settings ---------------------------------------------------------------------------


@pytest.mark.slow  # a dozen image-jobs processes
async def test_bad_arguments_and_missing_settings_exit_2_with_one_line(
    cli_env: dict[str, str],
) -> None:
    cases = {
        (): "required: command",
        ("status", "not-a-uuid"): "not a job id",
        ("frobnicate",): "invalid choice",
        ("watch", "--interval", "-1"): "must be positive",
        ("list", "--limit", "many"): "not a whole number",
        ("retry-failed",): "or pass --all",
        ("inject", "/no/such/file.jpg"): "no such file",
        ("inject", "s3://bucket-only"): "s3://bucket/key",
    }
    results = await asyncio.gather(*(run(cli_env, *args) for args in cases), run(cli_env, "-h"))
    assert results[-1].code == 0
    assert "Exit codes" in results[-1].stdout
    for (args, fragment), result in zip(cases.items(), results, strict=False):
        one_clear_line(result, fragment)
        assert result.code == 2, args

    unset = {k: v for k, v in cli_env.items() if k != "DATABASE_URL"}
    one_clear_line(r := await run(unset, "stats"), "DATABASE_URL must be set")
    assert r.code == 2


@pytest.mark.slow  # four image-jobs processes; test_inject_cli_waits_for_outcomes runs the CLI fast
async def test_unreachable_database_exits_3_with_one_line(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "DATABASE_URL": f"postgresql://postgres:secret@127.0.0.1:{unused_port()}/x"}
    commands = (["stats"], ["list"], ["status", str(uuid.uuid4())], ["retry-queue-failed"])
    results = await asyncio.gather(*(run(env, *command) for command in commands))
    for command, result in zip(commands, results, strict=True):
        line = one_clear_line(result, "cannot reach the database at 127.0.0.1")
        assert "secret" not in line
        assert result.code == 3, (command, result)
        assert result.stdout == ""


@pytest.mark.slow  # image-jobs processes waiting on a closed port
async def test_unreachable_sqs_exits_3_with_one_line(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**cli_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{unused_port()}"}
    result = await run(env, "send-raw", '{"job_id": "x"}')
    one_clear_line(result, "cannot reach SQS/S3 at http://127.0.0.1")
    assert result.code == 3
    (tmp_path / "a.jpg").write_bytes(b"jpeg")
    result = await run(env, "inject", str(tmp_path / "a.jpg"))
    one_clear_line(result, "cannot reach SQS/S3")
    assert result.code == 3

    result = await run(cli_env, "send-raw", "{}", "--queue-url", cli_env["SQS_QUEUE_URL"] + "-no")
    one_clear_line(result, "not found")
    assert result.code == 2


# -- creating jobs ---------------------------------------------------------------------------------


@pytest.mark.slow  # several image-jobs processes
async def test_inject_folder_files_and_s3_objects_with_progress(
    cli_env: dict[str, str], aws: Aws, producer: JobClient, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.png", "c.JPEG"):
        (folder / name).write_bytes(name.encode())
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "single.webp").write_bytes(b"webp")
    await aws.put("existing/photo.jpg", b"already there")

    result = await run(
        cli_env, "inject", "--progress", "--book-id", "book-9",
        str(folder), str(tmp_path / "single.webp"), f"s3://{aws.bucket}/existing/photo.jpg",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert "inject: 4/4 uploaded" in result.stderr
    assert len(result.lines) == 5
    for line, label in zip(
        result.lines,
        [*(str(folder / n) for n in ("a.jpg", "b.png", "c.JPEG")), str(tmp_path / "single.webp"),
         f"s3://{aws.bucket}/existing/photo.jpg"],
        strict=True,
    ):  # fmt: skip
        job_id, status, shown = line.split(" ", 2)
        assert (status, shown) == ("pending", label)
        job = await producer.get_job(uuid.UUID(job_id))
        assert job is not None
        assert job.book_id == "book-9"
    last = await producer.get_job(uuid.UUID(result.lines[-1].split()[0]))
    assert last is not None
    assert last.source_key == "existing/photo.jpg"
    first = await producer.get_job(uuid.UUID(result.lines[0].split()[0]))
    assert first is not None
    assert await aws.get(first.source_key) == b"a.jpg"
    assert len(await queued(aws)) == 5

    result = await run(cli_env, "--json", "inject", str(tmp_path / "single.webp"))
    assert result.code == 0
    assert "uploaded" not in result.stderr  # no progress off a terminal unless asked
    [payload] = result.json_lines()
    assert payload["status"] == "pending"
    assert payload["file"] == str(tmp_path / "single.webp")

    result = await run(cli_env, "inject", f"s3://{aws.bucket}/missing.jpg")
    one_clear_line(result, f"no such object: s3://{aws.bucket}/missing.jpg")
    assert result.code == 2


@pytest.mark.slow  # image-jobs retrying a missing queue
async def test_inject_with_the_queue_missing_keeps_queue_failed_jobs_and_exits_3(
    cli_env: dict[str, str], aws: Aws, producer: JobClient, tmp_path: Path
) -> None:
    (tmp_path / "a.jpg").write_bytes(b"a")
    env = {**cli_env, "SQS_QUEUE_URL": aws.queue_url + "-gone"}
    result = await run(env, "inject", "--wait", str(tmp_path / "a.jpg"))
    assert result.code == 3
    one_clear_line(result, "1 job(s) saved but not queued", "retry-queue-failed")
    job_id, status, _ = result.lines[0].split(" ", 2)
    assert status == "queue_failed"

    result = await run(cli_env, "retry-queue-failed")
    assert (result.code, result.stdout.strip()) == (0, "re-sent 1, still queue_failed 0")
    assert [decode_message(b) for b in await queued(aws)] == [uuid.UUID(job_id)]
    job = await producer.get_job(uuid.UUID(job_id))
    assert job is not None
    assert job.status == "pending"


@pytest.mark.slow  # several image-jobs processes
async def test_enqueue_and_send_raw(cli_env: dict[str, str], aws: Aws) -> None:
    await aws.put("books/1.jpg", b"x")
    await aws.put("books/2.jpg", b"y")
    result = await run(cli_env, "--json", "enqueue", "--key", "books/1.jpg", "--key", "books/2.jpg")
    assert result.code == 0, result.stderr
    jobs = result.json_lines()
    assert [(j["source"], j["status"]) for j in jobs] == [
        (f"s3://{aws.bucket}/books/1.jpg", "pending"),
        (f"s3://{aws.bucket}/books/2.jpg", "pending"),
    ]
    result = await run(cli_env, "send-raw", "not json, a poison message")
    assert result.code == 0
    assert result.stdout.startswith("sent ")
    result = await run(cli_env, "--json", "send-raw", "-", stdin=b'{"job_id": "nope"}')
    assert result.json()["queue_url"] == aws.queue_url
    bodies = await queued(aws)
    assert sorted(bodies[2:]) == sorted(['{"job_id": "nope"}', "not json, a poison message"])
    assert {str(decode_message(b)) for b in bodies[:2]} == {j["id"] for j in jobs}

    result = await run(cli_env, "enqueue", "--key", "books/none.jpg")
    one_clear_line(result, "no such object")
    assert result.code == 2


@pytest.mark.slow  # a dozen image-jobs processes
async def test_recipe_flags_and_cancel(cli_env: dict[str, str], aws: Aws, db: asyncpg.Pool) -> None:
    await aws.put("books/1.jpg", b"x")
    flags = [
        "--model", "u2net", "--fallback-model", "isnet-general-use", "--matting",
        "--background", "#112233", "--format", "webp", "--trim", "--padding", "8",
        "--max-size", "2048", "--thumbnail", "600", "--thumbnail", "300", "--min-subject-px", "100",
    ]  # fmt: skip
    result = await run(cli_env, "--json", "enqueue", "--key", "books/1.jpg", *flags)
    assert result.code == 0, result.stderr
    (job,) = result.json_lines()
    assert job["recipe"] == {
        "model": "u2net", "fallback_model": "isnet-general-use", "matting": True,
        "background": "#112233", "format": "webp", "trim": True, "padding": 8,
        "max_size": 2048, "thumbnails": [300, 600], "min_subject_px": 100,
        "fallback_from_attempt": None,
    }  # fmt: skip
    stored = await db.fetchval("SELECT recipe->>'format' FROM image_processing_jobs")
    assert stored == "webp"
    plain = await run(cli_env, "--json", "inject", "s3://" + aws.bucket + "/books/1.jpg")
    assert plain.json_lines()[0]["recipe"] is None  # no flag: the worker's DEFAULT_RECIPE

    for bad, flag in (
        (["--format", "jpeg"], "--format"),  # jpeg on a transparent background
        (["--thumbnail", "3"], "--thumbnail"),
        (["--padding", "4"], "--padding"),  # only with --trim
        (["--background", "red"], "--background"),
    ):
        refused = await run(cli_env, "enqueue", "--key", "books/1.jpg", *bad)
        assert refused.code == 2
        one_clear_line(refused, flag)

    cancelled = await run(cli_env, "cancel", job["id"], "--reason", "book removed")
    assert (cancelled.code, cancelled.stdout.strip()) == (0, f"{job['id']} cancelled")
    again = await run(cli_env, "--json", "cancel", job["id"])
    assert again.json()["outcome"] == "already_finished"
    assert again.json()["job"]["error"] == "book removed"
    missing = await run(cli_env, "cancel", str(uuid.uuid4()))
    assert missing.code == 1


# -- looking -------------------------------------------------------------------------------------


@pytest.mark.slow  # several image-jobs processes and a wait
async def test_status_human_json_unknown_failed_and_wait(
    cli_env: dict[str, str], db: asyncpg.Pool
) -> None:
    pending = await insert_job(db, "pending")
    failed = await insert_job(db, "failed", error="not a supported image: HTML")

    result = await run(cli_env, "status", str(pending))
    assert result.code == 0
    assert f"id          {pending}" in result.lines
    assert "status      pending" in result.lines
    assert "source      s3://b/sources/x.jpg" in result.lines

    result = await run(cli_env, "status", str(failed), "--json")
    assert result.code == 1  # the job failed
    assert result.json()["status"] == "failed"
    assert result.json()["error"] == "not a supported image: HTML"

    unknown = uuid.uuid4()
    result = await run(cli_env, "status", str(unknown))
    one_clear_line(result, f"no job {unknown}")
    assert (result.code, result.stdout) == (1, "")

    result = await run(cli_env, "status", str(pending), "--wait", "--timeout", "0.5")
    one_clear_line(result, "still pending after 0.5s")
    assert result.code == 1

    async def complete_soon() -> None:
        await asyncio.sleep(1.0)
        await db.execute(
            """UPDATE image_processing_jobs SET status = 'completed', result_bucket = 'b',
                      result_key = 'cutouts/y.png' WHERE id = $1""",
            pending,
        )

    finisher = asyncio.create_task(complete_soon())
    result = await run(cli_env, "--json", "status", "--wait", "--timeout", "20", str(pending))
    await finisher
    assert result.code == 0, result.stderr
    assert result.json()["result"] == "s3://b/cutouts/y.png"


@pytest.mark.slow  # nine image-jobs processes, watch ticks
async def test_list_stats_and_watch(cli_env: dict[str, str], db: asyncpg.Pool, aws: Aws) -> None:
    old = await insert_job(
        db, "failed", error="gave up after 5 attempts: S3\ndown", age=timedelta(hours=2)
    )
    new = await insert_job(db, "failed", error="broken")
    pending = await insert_job(db, "pending", age=timedelta(minutes=3))
    await aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody="{}")
    sqs_down = {**cli_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{unused_port()}"}
    (
        listed, failed_json, no_jobs, bad_age, stats, stats_json, watched, once, degraded
    ) = await asyncio.gather(
        run(cli_env, "list"),
        run(cli_env, "list", "--json", "--status", "failed", "--older-than", "1h"),
        run(cli_env, "list", "--status", "completed"),
        run(cli_env, "list", "--older-than", "soon"),
        run(cli_env, "stats"),
        run(cli_env, "stats", "--json"),
        run(cli_env, "watch", "--count", "3", "--interval", "0.2"),
        run(cli_env, "watch", "--once", "--json"),
        run(sqs_down, "stats"),
    )  # fmt: skip

    assert listed.code == 0
    assert listed.lines[0].split() == ["ID", "STATUS", "TRIES", "AGE", "SOURCE", "/", "ERROR"]
    assert [line.split()[0] for line in listed.lines[1:]] == [str(new), str(pending), str(old)]
    assert "gave up after 5 attempts: S3 down" in listed.lines[3]
    assert re.search(r"\b2h0[0-4]m\b", listed.lines[3])  # 2 hours old, plus however long this took
    assert [job["id"] for job in failed_json.json()] == [str(old)]
    assert no_jobs.stdout.strip() == "no jobs"
    one_clear_line(bad_age, "not a duration")
    assert bad_age.code == 2

    assert stats.code == 0, stats.stderr
    assert stats.lines[0].split() == [
        "jobs", "pending=1", "queue_failed=0", "processing=0", "completed=0", "failed=2",
        "cancelled=0",
    ]  # fmt: skip
    oldest = re.fullmatch(r"oldest pending  (\d+)m(\d\d)s", stats.lines[1].rstrip())
    assert oldest, stats.lines[1]
    assert 180 <= int(oldest[1]) * 60 + int(oldest[2]) < 300  # 3 minutes old, plus the run time
    assert stats.lines[2].split() == ["queue", "visible=0", "in_flight=0", "delayed=0"]
    assert stats.lines[3].split() == ["dlq", "visible=1", "in_flight=0", "delayed=0"]
    payload = stats_json.json()
    assert payload["counts"]["failed"] == 2
    assert payload["dlq"]["visible"] == 1
    assert 170 < payload["oldest_pending_age_seconds"] < 300

    assert watched.code == 0
    assert len(watched.lines) == 3
    assert all("pending=1" in line and "dlq=1" in line for line in watched.lines)
    [tick] = once.json_lines()
    assert tick["counts"]["failed"] == 2

    assert degraded.code == 3
    assert "queue           unavailable" in degraded.stdout
    one_clear_line(degraded, "cannot read queue depth")


# -- repairs -------------------------------------------------------------------------------------


@pytest.mark.slow  # several image-jobs processes
async def test_retry_failed_and_redrive_dlq(
    cli_env: dict[str, str], db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    chosen = await insert_job(db, "failed", error="gave up after 5 attempts: S3 down")
    completed = await insert_job(db, "completed")
    unknown = uuid.uuid4()

    result = await run(cli_env, "retry-failed", str(chosen))
    assert (result.code, result.stdout.strip()) == (0, "re-queued 1")
    job = await producer.get_job(chosen)
    assert job is not None
    assert (job.status, job.attempts, job.error) == ("pending", 0, None)
    assert [decode_message(b) for b in await queued(aws)] == [chosen]

    result = await run(cli_env, "--json", "retry-failed", str(completed), str(unknown))
    assert result.code == 1  # nothing to retry for these two
    assert result.json()["skipped"] == {
        str(completed): "status is completed, not failed",
        str(unknown): "not found",
    }

    dead = await insert_job(db, "failed", error="gave up after 5 attempts: S3 down")
    await aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody=json.dumps({"job_id": str(dead)}))
    await aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody="poison")
    result = await run(cli_env, "redrive-dlq")
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == (
        "moved 2 message(s) from the DLQ, reset 1 failed job(s), 1 without a job"
    )
    job = await producer.get_job(dead)
    assert job is not None
    assert (job.status, job.attempts, job.error) == ("pending", 0, None)
    assert await aws.queue_counts(aws.dlq_url) == (0, 0)
    assert sorted(await queued(aws)) == sorted(
        ["poison", json.dumps({"job_id": str(dead), "v": 1})]
    )

    result = await run(cli_env, "--json", "redrive-dlq", "--dlq-url", aws.dlq_url)
    assert result.json()["moved"] == 0

    plain = (await aws.sqs.create_queue(QueueName=f"plain-{uuid.uuid4().hex[:8]}"))["QueueUrl"]
    result = await run({**cli_env, "SQS_QUEUE_URL": plain}, "redrive-dlq")
    one_clear_line(result, "no DLQ")
    assert result.code == 2
