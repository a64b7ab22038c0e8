"""The model registry: the models recipes name, loaded on first use and kept in an LRU cache.

One inference pool (INFERENCE_THREADS) serves every model, and loads run in it too, never on the
event loop. At most MAX_LOADED_MODELS models are loaded at once (a model's sessions count as one);
the least recently used one that no job is running is evicted to make room, and a job that finds
every place taken by running models waits for one to finish. With BATCH_SIZE > 1 the default
recipe's model is batched and pinned (its micro-batcher loop runs for the worker's life).

Names: rembg's whole model list (weights at U2NET_HOME/<name>.onnx) and CUSTOM_MODELS (ONNX files
run as u2net-family models)."""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog

from worker.batching import MicroBatcher
from worker.errors import JobFailed, permanent
from worker.inference import GpuRequired, ModelRunner
from worker.metrics import WorkerMetrics
from worker.settings import Settings
from worker.watchdog import TimedThreadPool
from worker.weights import ModelUnavailable, model_path

log = structlog.get_logger(__name__)

# rembg 2.0.x's model names (`rembg.sessions.sessions_class`), kept here because importing rembg
# costs about 200 MiB of RSS; tests/test_recipes_models.py checks the list against rembg.
REMBG_MODELS = (
    "birefnet-general", "birefnet-general-lite", "birefnet-general-fp16", "birefnet-portrait",
    "birefnet-dis", "birefnet-hrsod", "birefnet-cod", "birefnet-massive", "isnet-anime",
    "dis_custom", "isnet-general-use", "sam", "silueta", "u2net_cloth_seg", "u2net_custom",
    "u2net_human_seg", "u2net", "u2netp", "bria-rmbg", "ben_custom", "withoutbg", "atlascloud",
)  # fmt: skip


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.custom: dict[str, Path] = dict(settings.custom_models)
        self.executor = TimedThreadPool(
            max_workers=settings.inference_threads, thread_name_prefix="inference"
        )
        self.capacity = settings.max_loaded_models
        self.pinned = settings.model_name if settings.batch_size > 1 else None
        self.provider: str | None = None
        self.abandoned_runs = 0
        self._loaded: OrderedDict[str, ModelRunner[Any, Any]] = OrderedDict()
        self._loading: set[str] = set()
        self._in_use: Counter[str] = Counter()
        self._changed = asyncio.Condition()

    @property
    def batcher(self) -> MicroBatcher | None:
        runner = self._loaded.get(self.pinned) if self.pinned else None
        return runner.batcher if runner is not None else None

    def loaded(self) -> list[str]:
        """Loaded model names, least recently used first."""
        return list(self._loaded)

    def available(self) -> list[str]:
        """The models this worker can run: rembg names whose weights are in U2NET_HOME, and
        custom models whose file exists."""
        home = self.settings.model_home
        found = {name for name in REMBG_MODELS if model_path(home, name).is_file()}
        found |= {name for name, path in self.custom.items() if path.is_file()}
        return sorted(found)

    async def preload(self, names: tuple[str, ...]) -> None:
        """Load (and warm up) these models now; a missing one stops the start. The batched
        model is always among them: its micro-batcher loop starts with the worker."""
        if self.pinned is not None and self.pinned not in names:
            names = (self.pinned, *names)
        for name in names:
            try:
                async with self.use(name):
                    pass
            except JobFailed as exc:
                raise ModelUnavailable(f"PRELOAD_MODELS: {exc.failure.reason}") from None

    @asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[ModelRunner[Any, Any]]:
        """The loaded model `name`, kept from eviction until the block ends. A model that is
        unknown or whose weights are missing fails the job permanently, listing what is here."""
        self._check_known(name)
        runner = await self._acquire(name)
        try:
            yield runner
        finally:
            async with self._changed:
                self._in_use[name] -= 1
                self._changed.notify_all()

    async def _acquire(self, name: str) -> ModelRunner[Any, Any]:
        async with self._changed:
            while True:
                if name in self._loaded:
                    self._loaded.move_to_end(name)
                    self._in_use[name] += 1
                    return self._loaded[name]
                if name not in self._loading and self._make_room():
                    self._loading.add(name)
                    break
                await self._changed.wait()  # its load by another job, or a place, to free up
        runner: ModelRunner[Any, Any] | None = None
        try:
            loop = asyncio.get_running_loop()
            runner = await loop.run_in_executor(self.executor, self._load, name)
        except GpuRequired:
            raise  # this worker cannot run any model (REQUIRE_GPU): not one model's fault
        except ModelUnavailable as exc:
            raise self._unavailable(name, str(exc)) from None
        finally:
            async with self._changed:
                self._loading.discard(name)
                if runner is not None:
                    self._loaded[name] = runner
                    self._in_use[name] += 1
                    self.metrics.models_loaded.set(len(self._loaded))
                self._changed.notify_all()
        return runner

    def _make_room(self) -> bool:
        """Evict least recently used idle models until one more fits; False when none can go."""
        while len(self._loaded) + len(self._loading) >= self.capacity:
            idle = [n for n in self._loaded if self._in_use[n] == 0 and n != self.pinned]
            if not idle:
                return False
            evicted = self._loaded.pop(idle[0])
            evicted.close()
            self.metrics.model_evictions.inc()
            self.metrics.models_loaded.set(len(self._loaded))
            log.info("model evicted", model=idle[0], max_loaded=self.capacity)
        return True

    def _load(self, name: str) -> ModelRunner[Any, Any]:
        runner = ModelRunner.load(
            self.settings,
            self.metrics,
            name=name,
            custom_file=self.custom.get(name),
            executor=self.executor,
            batching=name == self.pinned,
        )
        self.provider = self.provider or runner.provider
        self.metrics.model_loads.labels(name).inc()
        self.metrics.model_load_seconds.set(runner.load_seconds)
        return runner

    def _check_known(self, name: str) -> None:
        if name not in self.custom and name not in REMBG_MODELS:
            raise self._unavailable(name, f"no model is named {name!r}")

    def _unavailable(self, name: str, detail: str) -> Exception:
        available = ", ".join(self.available()) or "none"
        return permanent(
            "model_unavailable",
            f"model {name!r} cannot be used on this worker: {detail}; available: {available}",
        )

    def close(self) -> None:
        """After the drain, a run still going belongs to a job that was given up, and ONNX Runtime
        cannot stop it: do not wait for it (`abandoned_runs` tells the caller to os._exit)."""
        self.abandoned_runs = len(self.executor.running_longer_than(0))
        if self.abandoned_runs:
            log.warning("model runs still going at close; not waiting", runs=self.abandoned_runs)
        self.executor.shutdown(wait=not self.abandoned_runs, cancel_futures=True)
        self._loaded.clear()
