"""`image-worker selfcheck` against the real local stack (PostgreSQL, moto SQS/S3, the u2netp
model), then with one dependency unreachable or missing: one line per failing check, exit 3."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Aws, worker_env
from tests.helpers import check_lines, selfcheck
from worker.selfcheck import EXIT_FAILED, PROBE_SUFFIX

REPO = Path(__file__).resolve().parents[1]


async def test_selfcheck_passes_on_a_reachable_stack(
    database_url: str, aws: Aws, model_home: Path
) -> None:
    env = worker_env(database_url, aws, model_home, RESULT_BUCKET=aws.bucket, RESULT_PREFIX="out/")
    completed = selfcheck(env, "--source-bucket", aws.bucket, "--source-prefix", "books/")
    assert completed.returncode == 0, completed.stderr
    (line,) = check_lines(completed.stdout)
    for name in ("model: u2netp on CPUExecutionProvider", "database:", "queue:", "dlq:",
                 "source bucket:", "result bucket:"):  # fmt: skip
        assert name in line, line
    assert check_lines(completed.stderr) == []
    # The probe is the one object written, under the result prefix.
    assert await aws.keys("out/") == [f"out/{PROBE_SUFFIX}"]


async def test_one_line_per_failing_check_and_exit_3(
    database_url: str, aws: Aws, model_home: Path
) -> None:
    # A GPU image on a host without one (REQUIRE_GPU, as the GPU task definition sets it), an
    # unreachable database (nothing listens on port 1) and a missing source bucket; the queue,
    # the DLQ and the result bucket are fine.
    unreachable = "postgresql://postgres@127.0.0.1:1/nothing"
    env = worker_env(unreachable, aws, model_home, RESULT_BUCKET=aws.bucket, REQUIRE_GPU="true")
    completed = selfcheck(env, "--source-bucket", f"{aws.bucket}-missing")
    assert completed.returncode == EXIT_FAILED, completed.stderr
    lines = check_lines(completed.stderr)
    assert len(lines) == 3, lines
    assert lines[0].startswith("selfcheck: model: GpuRequired: REQUIRE_GPU=true but"), lines
    assert lines[1].startswith("selfcheck: database: "), lines
    assert "ConnectionRefused" in lines[1] or "Connect call failed" in lines[1], lines
    assert lines[2] == "selfcheck: source bucket: ListObjectsV2: NoSuchBucket " + (
        "(The specified bucket does not exist)"
    ), lines
    assert check_lines(completed.stdout) == []
