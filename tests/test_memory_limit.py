"""The memory proof as a test: four 64 MP float32 TIFFs (each under 3 MiB of file, 256 MB of
float pixels) at once through the real worker daemon in a 1.5 GiB memory cgroup. Without
admission this limit OOM-kills the worker (docs/performance.md, "Memory at 64 MP"); with the
default budget all four complete and the kernel kills nothing. Needs root (cgroup directories)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.memory_admission import CGROUP_ROOT, MODEL_HOME, SIDE, Stack, run_case
from tests.conftest import Aws

LIMIT_BYTES = 1536 << 20
REPO = Path(__file__).resolve().parents[1]


def _cgroup_writable() -> bool:
    if os.geteuid() != 0:
        return False
    controllers = CGROUP_ROOT / "cgroup.controllers"
    v2 = controllers.exists() and "memory" in controllers.read_text().split()
    return v2 or (CGROUP_ROOT / "memory" / "memory.limit_in_bytes").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _cgroup_writable(), reason="needs root and a cgroup memory controller")
async def test_four_64_mp_float_tiffs_finish_under_a_memory_limit(
    aws: Aws, database_url: str, model_home: Path
) -> None:
    assert model_home == MODEL_HOME  # the worker process reads the model from there
    row = np.repeat(np.linspace(-1.0, 3.0, SIDE // 100, dtype=np.float32), 100)
    buffer = io.BytesIO()
    Image.fromarray(np.tile(row, (SIDE, 1)), mode="F").save(
        buffer, format="TIFF", compression="tiff_adobe_deflate"
    )
    await aws.put("memory/float.tif", buffer.getvalue())
    stack = Stack(database_url, aws.endpoint, aws.queue_url, aws.bucket, {})
    result = await run_case(
        "four float TIFFs, admission on",
        stack,
        ["memory/float.tif"] * 4,
        LIMIT_BYTES,
        REPO,
        WORKER_CONCURRENCY="4",
        CPU_THREADS="4",
    )
    print(result.line())
    assert result.oom_kills == 0
    assert result.exit_code is None  # still running when the jobs were done
    assert result.outcomes == {"completed": 4}
    assert result.peak < LIMIT_BYTES
