"""The model runner: the one place rembg runs. A session is made once with explicit execution
providers, warmed up, and used from a dedicated, sized thread pool (ONNX Runtime releases the GIL
and its `run` is thread-safe)."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import onnxruntime as ort
import structlog
from PIL import Image

from worker.models import ModelUnavailable, verify_model
from worker.settings import Settings

log = structlog.get_logger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# HEURISTIC avoids EXHAUSTIVE's slow first run per input shape; the arena grows by what is asked.
CUDA_OPTIONS = {
    "device_id": 0,
    "cudnn_conv_algo_search": "HEURISTIC",
    "arena_extend_strategy": "kSameAsRequested",
    "do_copy_in_default_stream": True,
}


class GpuRequired(ModelUnavailable):
    pass


@dataclass(frozen=True, slots=True)
class ProviderChoice:
    requested: list[Any]
    names: list[str]


def choose_providers(execution_provider: str, available: list[str]) -> ProviderChoice:
    wants_cuda = execution_provider == "cuda" or (
        execution_provider == "auto" and CUDA in available
    )
    if execution_provider == "cuda" and CUDA not in available:
        raise GpuRequired(
            f"EXECUTION_PROVIDER=cuda but this onnxruntime offers only {', '.join(available)}"
            " (install onnxruntime-gpu with CUDA and cuDNN)"
        )
    if wants_cuda:
        return ProviderChoice([(CUDA, CUDA_OPTIONS), CPU], [CUDA, CPU])
    return ProviderChoice([CPU], [CPU])


class ModelRunner:
    def __init__(self, session: Any, provider: str, model_name: str, threads: int) -> None:
        self.session = session
        self.provider = provider
        self.model_name = model_name
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="inference")
        self.load_seconds = 0.0

    @classmethod
    def load(cls, settings: Settings) -> ModelRunner:
        """Blocking: verify the weights, build the session, run a warm-up inference."""
        started = time.perf_counter()
        verify_model(settings.model_home, settings.model_name)
        os.environ["U2NET_HOME"] = str(settings.model_home)  # where rembg looks for weights
        from rembg import new_session

        choice = choose_providers(settings.execution_provider, ort.get_available_providers())
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.ort_intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = new_session(settings.model_name, sess_opts=options, providers=choice.requested)
        active = session.inner_session.get_providers()
        provider = active[0] if active else CPU
        if settings.require_gpu and provider != CUDA:
            raise GpuRequired(
                f"REQUIRE_GPU=true but ONNX Runtime runs on {provider} (requested "
                f"{', '.join(choice.names)}): CUDA or cuDNN libraries are missing or mismatched"
            )
        runner = cls(session, provider, settings.model_name, settings.inference_threads)
        runner.predict(Image.new("RGB", (320, 320), (128, 128, 128)))  # warm-up
        runner.load_seconds = time.perf_counter() - started
        log.info(
            "model loaded",
            model=settings.model_name,
            provider=provider,
            available=ort.get_available_providers(),
            seconds=round(runner.load_seconds, 3),
        )
        return runner

    def predict(self, image: Image.Image) -> Image.Image:
        """Blocking: the alpha mask (mode L, the image's size)."""
        masks = self.session.predict(image)
        mask: Image.Image = masks[0]
        return mask

    async def infer(self, image: Image.Image) -> tuple[Image.Image, float]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._timed_predict, image)

    def _timed_predict(self, image: Image.Image) -> tuple[Image.Image, float]:
        started = time.perf_counter()
        mask = self.predict(image)
        return mask, time.perf_counter() - started

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
