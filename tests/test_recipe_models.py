"""The model registry on real ONNX Runtime sessions: u2netp and small models built here."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.onnx_models import fixed_map_model
from worker.errors import JobFailed
from worker.metrics import WorkerMetrics
from worker.models import REMBG_MODELS, ModelRegistry
from worker.settings import Settings, SettingsError
from worker.weights import ModelUnavailable

BASE = {"DATABASE_URL": "postgresql://u@h/db", "SQS_QUEUE_URL": "http://127.0.0.1:1/q"}


def settings(model_home: Path, **env: str) -> Settings:
    return Settings.from_env({**BASE, "U2NET_HOME": str(model_home), **env})


@pytest.fixture
def custom(tmp_path: Path) -> str:
    empty = fixed_map_model(tmp_path / "empty.onnx")
    box = fixed_map_model(tmp_path / "box.onnx", (80, 60, 240, 260))
    return f"empty={empty},box={box}"


def test_the_model_list_is_rembgs() -> None:
    from rembg.sessions import sessions_class

    assert sorted(REMBG_MODELS) == sorted(c.name() for c in sessions_class)


async def test_lru_keeps_at_most_max_loaded_models(model_home: Path, custom: str) -> None:
    metrics = WorkerMetrics()
    registry = ModelRegistry(
        settings(model_home, CUSTOM_MODELS=custom, MAX_LOADED_MODELS="2"), metrics
    )
    try:
        await registry.preload(("u2netp",))
        async with registry.use("box") as runner:
            image = Image.new("RGB", (640, 480), (90, 90, 90))
            output = await runner.infer(runner.prepare(image))
            mask = np.asarray(runner.mask_from_output(output[0], image.size))
            assert mask[240, 320] == 255
            assert mask[5, 5] == 0
        assert registry.loaded() == ["u2netp", "box"]
        async with registry.use("u2netp"):
            pass
        async with registry.use("empty"):
            assert registry.loaded() == ["u2netp", "empty"]  # box was the least recently used
        assert metrics.registry.get_sample_value("image_worker_model_evictions_total") == 1
        assert metrics.registry.get_sample_value("image_worker_models_loaded") == 2
        assert registry.available() == ["box", "empty", "u2netp"]
    finally:
        registry.close()


async def test_a_model_in_use_is_not_evicted(model_home: Path, custom: str) -> None:
    registry = ModelRegistry(
        settings(model_home, CUSTOM_MODELS=custom, MAX_LOADED_MODELS="1", PRELOAD_MODELS="box"),
        WorkerMetrics(),
    )
    try:
        await registry.preload(("box",))
        order: list[str] = []

        async def other() -> None:
            async with registry.use("empty"):
                order.append("empty loaded")

        async with registry.use("box"):
            waiting = asyncio.create_task(other())
            await asyncio.sleep(0.5)
            assert not waiting.done()  # no place: box runs
            assert registry.loaded() == ["box"]
            order.append("box released")
        await asyncio.wait_for(waiting, 60)
        assert order == ["box released", "empty loaded"]
        assert registry.loaded() == ["empty"]
    finally:
        registry.close()


async def test_missing_weights_and_unknown_names_list_the_available_models(
    model_home: Path, custom: str
) -> None:
    registry = ModelRegistry(settings(model_home, CUSTOM_MODELS=custom), WorkerMetrics())
    try:
        for name, detail in [
            ("isnet-general-use", "not found at"),
            ("no-such-model", "no model is named 'no-such-model'"),
        ]:
            with pytest.raises(JobFailed) as caught:
                async with registry.use(name):
                    pass
            failure = caught.value.failure
            assert failure.permanent
            assert failure.code == "model_unavailable"
            assert detail in failure.reason
            assert failure.reason.endswith("available: box, empty, u2netp")
        with pytest.raises(ModelUnavailable, match="PRELOAD_MODELS: model 'u2net' cannot"):
            await registry.preload(("u2net",))
    finally:
        registry.close()


def test_recipe_settings(model_home: Path) -> None:
    plain = settings(model_home)
    assert plain.default_recipe.model == plain.model_name == "u2netp"
    assert plain.preload_models == ("u2netp",)
    assert plain.max_image_side == 4096
    assert not plain.default_recipe_set  # rows without a recipe: today's job, no gate
    mixed = settings(model_home, MODEL_NAME="u2net", DEFAULT_RECIPE='{"background": "auto"}')
    assert mixed.default_recipe.model == mixed.model_name == "u2net"
    assert mixed.default_recipe.background == "auto"
    assert mixed.default_recipe_set
    assert mixed.preload_models == ("u2net",)
    with pytest.raises(SettingsError) as caught:
        settings(
            model_home,
            DEFAULT_RECIPE='{"format": "jpeg"}',
            CUSTOM_MODELS="nameonly",
            PRELOAD_MODELS="a,b,c",
            MAX_IMAGE_SIDE="0",
        )
    problems = "\n".join(caught.value.problems)
    assert "DEFAULT_RECIPE is not a valid recipe: recipe.format: jpeg has no" in problems
    assert "CUSTOM_MODELS: 'nameonly' is not name=/path/model.onnx" in problems
    assert "PRELOAD_MODELS needs 3 models loaded, over MAX_LOADED_MODELS=2" in problems
    assert "MAX_IMAGE_SIDE=0 is out of range" in problems
    with pytest.raises(SettingsError, match="DEFAULT_RECIPE has model 'u2net' but MODEL_NAME="):
        settings(model_home, MODEL_NAME="u2netp", DEFAULT_RECIPE='{"model": "u2net"}')
