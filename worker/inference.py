"""The model runner: the one place rembg's models run. A session is made once with explicit
execution providers, warmed up, and used from a dedicated, sized thread pool (ONNX Runtime releases
the GIL and its `run` is thread-safe).

Two strategies, chosen and built whole by `ModelRunner.load`. `SplitRunner`, for the u2net family
and CUSTOM_MODELS files: the worker runs the ONNX file itself with rembg's pre- and
post-processing reproduced step for step (checked equal to rembg's own `predict` in
tests/test_inference.py), so it never imports `rembg`: its import pulls in pymatting, numba, scipy
and scikit-image (about 200 MiB of RSS) for rembg's alpha matting (a matting recipe loads
worker/matting.py's own stack on its first job). `RembgRunner`, for every other model: rembg's
session, run whole. worker/models.py decides which models are loaded."""

from __future__ import annotations

import abc
import asyncio
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import onnxruntime as ort
import structlog
from PIL import Image

from worker import cuda_libs
from worker.batching import MicroBatcher, with_symbolic_batch
from worker.metrics import WorkerMetrics
from worker.settings import Settings
from worker.watchdog import TimedThreadPool
from worker.weights import ModelUnavailable, verify_model

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


# Models whose rembg `predict` is exactly: normalize (ImageNet mean/std, 320x320) -> run ->
# min-max over the first output -> resize back. For these the worker splits `predict` into
# stages, so pre- and post-processing run on the CPU pool while the model serves the next job.
# tests/test_inference.py checks the split gives rembg's own masks, pixel for pixel.
SPLIT_MODELS = frozenset({"u2net", "u2netp", "u2net_human_seg", "silueta"})
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
INPUT_SIZE = (320, 320)


def normalize(image: Image.Image) -> np.ndarray:
    """rembg's `BaseSession.normalize` for the u2net family, operation for operation (float64
    arithmetic, then float32), so the model sees the same tensor: LANCZOS to 320x320, scale by
    the image's maximum, ImageNet mean and std, NCHW."""
    if image.mode != "RGB":
        image = image.convert("RGB")  # rembg converts unconditionally; a copy only when needed
    pixels = np.array(image.resize(INPUT_SIZE, Image.Resampling.LANCZOS))
    scaled = pixels / max(np.max(pixels), 1e-6)
    tensor = np.zeros((scaled.shape[0], scaled.shape[1], 3))
    for channel in range(3):
        tensor[:, :, channel] = (scaled[:, :, channel] - MEAN[channel]) / STD[channel]
    return np.expand_dims(tensor.transpose((2, 0, 1)), 0).astype(np.float32)


ARENA_EXTEND_SAME_AS_REQUESTED = 1  # ONNX Runtime's kSameAsRequested (0: next power of two)


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


def session_options(
    settings: Settings, intra_op_threads: int, *, cpu_only: bool
) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning intra-op threads burn the cores that decode and encode need in between runs.
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.ort_allow_spinning else "0"
    )
    if cpu_only:
        # Activations, not weights, are the memory (u2netp: about 230 MiB per run in flight).
        # A memory pattern allocates a second, planned block per session on top of the arena's
        # first-run chunks; one arena shared by both sessions, grown by what is asked, holds
        # just what the runs in flight need. Measured in docs/performance.md.
        options.enable_mem_pattern = False
        share_cpu_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    return options


_shared_arena_lock = threading.Lock()
_shared_arena = False


def share_cpu_arena() -> None:
    """Register, once per process, the CPU arena that sessions with `use_env_allocators` use."""
    global _shared_arena
    with _shared_arena_lock:
        if _shared_arena:
            return
        ort.create_and_register_allocator(
            ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            ),
            ort.OrtArenaCfg({"arena_extend_strategy": ARENA_EXTEND_SAME_AS_REQUESTED}),
        )
        _shared_arena = True


In = TypeVar("In")
Out = TypeVar("Out")


class ModelRunner(abc.ABC, Generic[In, Out]):
    """One loaded model: `prepare` (CPU) -> `run` or `infer` (the model) -> `mask_from_output`
    (CPU). Two strategies: `SplitRunner` (the u2net family and CUSTOM_MODELS files, stages
    reproduced from rembg) and `RembgRunner` (any other rembg model, run whole). `load` builds
    either, complete, in one place."""

    split: ClassVar[bool]  # pre- and post-processing run apart from the model

    def __init__(
        self,
        model_name: str,
        provider: str,
        metrics: WorkerMetrics,
        executor: TimedThreadPool,
        *,
        owns_executor: bool,
    ) -> None:
        self.model_name = model_name
        self.provider = provider
        self.metrics = metrics
        # A registry shares one pool between its models (INFERENCE_THREADS in all) and closes it.
        self.executor = executor
        self.owns_executor = owns_executor
        self.batcher: MicroBatcher | None = None
        self.abandoned_runs = 0
        self.load_seconds = 0.0

    @staticmethod
    def load(
        settings: Settings,
        metrics: WorkerMetrics | None = None,
        *,
        name: str | None = None,
        custom_file: Path | None = None,
        executor: TimedThreadPool | None = None,
        batching: bool = True,
    ) -> ModelRunner[Any, Any]:
        """Blocking: verify the weights, build the strategy the model needs with its sessions,
        run a warm-up inference. `name` defaults to MODEL_NAME; `custom_file` is an ONNX file run
        as a u2net-family model; `batching` allows the micro-batcher when BATCH_SIZE > 1."""
        started = time.perf_counter()
        name = name or settings.model_name
        split = custom_file is not None or name in SPLIT_MODELS
        model_file = verify_custom(name, custom_file) if custom_file else None
        model_file = model_file or verify_model(settings.model_home, name)
        choice = choose_providers(settings.execution_provider, ort.get_available_providers())
        if CUDA in choice.names and hasattr(ort, "preload_dlls"):
            # CUDA and cuDNN from pip wheels (nvidia-*) are found only once preloaded.
            cuda_libs.preload(ort)
        ort.set_default_logger_severity(3)  # errors only, as rembg sets it
        cpu_only = choice.names == [CPU]
        options = session_options(settings, settings.ort_intra_op_threads, cpu_only=cpu_only)
        if split:
            session = ort.InferenceSession(
                str(model_file), sess_options=options, providers=choice.requested
            )
        else:
            whole = rembg_session(settings, name, options, choice)
            session = whole.inner_session
        active = session.get_providers()
        provider = active[0] if active else CPU
        if settings.require_gpu and provider != CUDA:
            raise GpuRequired(
                f"REQUIRE_GPU=true but ONNX Runtime runs on {provider} (requested "
                f"{', '.join(choice.names)}): {cuda_libs.provider_load_error(ort)}"
            )
        batched = settings.batch_size > 1 and batching
        if batched and not split:
            raise ModelUnavailable(
                f"BATCH_SIZE={settings.batch_size} needs a u2net-family model, not "
                f"{name!r}: set BATCH_SIZE=1"
            )
        metrics = metrics or WorkerMetrics()
        owns_executor = executor is None
        executor = executor or TimedThreadPool(
            max_workers=settings.inference_threads, thread_name_prefix="inference"
        )
        runner: ModelRunner[Any, Any]
        if split:
            overlap = None
            if provider == CPU and settings.inference_threads > 1:
                # A lone job gets every core (latency); overlapping runs get one thread each,
                # which beats two runs fighting over all cores (throughput). Same weights, same
                # results.
                overlap = ort.InferenceSession(
                    str(model_file),
                    sess_options=session_options(settings, 1, cpu_only=True),
                    providers=[CPU],
                )
            batcher = None
            if batched:
                batcher = MicroBatcher(
                    ort.InferenceSession(
                        with_symbolic_batch(model_file),
                        sess_options=options,
                        providers=choice.requested,
                    ),
                    executor,
                    settings.batch_size,
                    settings.batch_wait_seconds,
                    metrics.batch_size,
                )
            runner = SplitRunner(
                name, provider, metrics, executor, owns_executor=owns_executor,
                session=session, overlap_session=overlap, batcher=batcher,
            )  # fmt: skip
        else:
            runner = RembgRunner(
                name, provider, metrics, executor, owns_executor=owns_executor, session=whole
            )
        runner.predict(Image.new("RGB", (320, 320), (128, 128, 128)))  # warm-up
        runner.load_seconds = time.perf_counter() - started
        log.info(
            "model loaded",
            model=name,
            provider=provider,
            available=ort.get_available_providers(),
            seconds=round(runner.load_seconds, 3),
        )
        return runner

    def predict(self, image: Image.Image) -> Image.Image:
        """Blocking: the alpha mask (mode L, the image's size), all stages in this thread."""
        return self.mask_from_output(self.run(self.prepare(image)), image.size)

    @abc.abstractmethod
    def prepare(self, image: Image.Image) -> In:
        """CPU stage: what the model stage takes."""

    @abc.abstractmethod
    def run(self, model_input: In) -> Out:
        """Model stage, blocking: the model's output."""

    @abc.abstractmethod
    def mask_from_output(self, output: Out, size: tuple[int, int]) -> Image.Image:
        """CPU stage: the alpha mask (mode L) at `size`. Uses no session: safe after the
        registry has let the model go."""

    @abc.abstractmethod
    def peak(self, output: Out) -> float | None:
        """The model's highest confidence (0-1) before any stretch; None when unknown."""

    async def infer(self, model_input: In) -> tuple[Out, float]:
        """The model stage on the inference pool: the output and the seconds it ran."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._timed_run, model_input)

    def _timed_run(self, model_input: In) -> tuple[Out, float]:
        started = time.perf_counter()
        output = self.run(model_input)
        return output, time.perf_counter() - started

    def close(self) -> None:
        """After the drain, a run still going belongs to a job that was given up or cancelled, and
        ONNX Runtime cannot stop it: do not wait for it (`abandoned_runs` tells the caller, which
        must then leave with os._exit, since interpreter exit joins pool threads). A shared pool
        is its owner's to close."""
        if not self.owns_executor:
            return
        self.abandoned_runs = len(self.executor.running_longer_than(0))
        if self.abandoned_runs:
            log.warning("model runs still going at close; not waiting", runs=self.abandoned_runs)
        self.executor.shutdown(wait=not self.abandoned_runs, cancel_futures=True)


class SplitRunner(ModelRunner[dict[str, np.ndarray], np.ndarray]):
    """The u2net family (and CUSTOM_MODELS files): rembg's `predict` split into stages, the ONNX
    file run by the worker itself; optionally a one-thread session for overlapping CPU runs and
    a micro-batcher."""

    split = True

    def __init__(
        self,
        model_name: str,
        provider: str,
        metrics: WorkerMetrics,
        executor: TimedThreadPool,
        *,
        owns_executor: bool,
        session: ort.InferenceSession,
        overlap_session: ort.InferenceSession | None,
        batcher: MicroBatcher | None,
    ) -> None:
        super().__init__(model_name, provider, metrics, executor, owns_executor=owns_executor)
        self.session = session  # the ONNX Runtime session a lone run uses
        self.input_name: str = session.get_inputs()[0].name
        self.overlap_session = overlap_session
        self.batcher = batcher
        self._running = 0
        self._running_lock = threading.Lock()

    def prepare(self, image: Image.Image) -> dict[str, np.ndarray]:
        return {self.input_name: normalize(image)}

    def run(self, model_input: dict[str, np.ndarray]) -> np.ndarray:
        """The raw saliency map."""
        with self._running_lock:
            overlap = self.overlap_session if self._running > 0 else None
            self._running += 1
        session = self.session
        if overlap is not None:
            self.metrics.overlapped_runs.inc()
            session = overlap
        try:
            output: np.ndarray = session.run(None, model_input)[0]
        finally:
            with self._running_lock:
                self._running -= 1
        return output

    def mask_from_output(self, output: np.ndarray, size: tuple[int, int]) -> Image.Image:
        """rembg's post-processing: min-max over the map, resized to the image."""
        prediction = output[:, 0, :, :]
        high, low = np.max(prediction), np.min(prediction)
        if high <= low:  # a flat map: nothing found (rembg would divide by zero)
            return Image.new("L", size, 0)
        prediction = np.squeeze((prediction - low) / (high - low))
        mask = Image.fromarray((prediction.clip(0, 1) * 255).astype("uint8"))
        return mask.resize(size, Image.Resampling.LANCZOS)

    def peak(self, output: np.ndarray) -> float | None:
        """Before rembg's min-max stretch, which turns even a map of near-zeros into a
        full-range mask."""
        return float(np.max(output[:, 0, :, :]))

    async def infer(self, model_input: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        if self.batcher is None:
            return await super().infer(model_input)
        started = time.perf_counter()
        tensor = model_input[self.batcher.input_name]
        return await self.batcher.infer(tensor), time.perf_counter() - started


class RembgRunner(ModelRunner[Image.Image, Image.Image]):
    """Any other rembg model, run whole through rembg's own session: its mask is finished."""

    split = False

    def __init__(
        self,
        model_name: str,
        provider: str,
        metrics: WorkerMetrics,
        executor: TimedThreadPool,
        *,
        owns_executor: bool,
        session: Any,
    ) -> None:
        super().__init__(model_name, provider, metrics, executor, owns_executor=owns_executor)
        self.rembg_session = session

    def prepare(self, image: Image.Image) -> Image.Image:
        return image

    def run(self, model_input: Image.Image) -> Image.Image:
        mask: Image.Image = self.rembg_session.predict(model_input)[0]
        return mask

    def mask_from_output(self, output: Image.Image, size: tuple[int, int]) -> Image.Image:
        return output

    def peak(self, output: Image.Image) -> float | None:
        return None


def rembg_session(
    settings: Settings, name: str, options: ort.SessionOptions, choice: ProviderChoice
) -> Any:
    """rembg's session for `name`, weights from U2NET_HOME (rembg is imported only here)."""
    os.environ["U2NET_HOME"] = str(settings.model_home)  # where rembg looks for weights
    from rembg import new_session

    try:
        return new_session(name, sess_opts=options, providers=choice.requested)
    except TypeError:
        # rembg (2.0.86) raises this from its own CPU-fallback warning, which cannot format a
        # (provider, options) tuple: ONNX Runtime could not start CUDA (no GPU or driver) and
        # fell back to the CPU. Build that CPU session; REQUIRE_GPU decides.
        if CUDA not in choice.names:
            raise
        return new_session(name, sess_opts=options, providers=[CPU])


def verify_custom(name: str, path: Path) -> Path:
    """A CUSTOM_MODELS file: present and not empty (its contents are checked by loading it)."""
    if not path.is_file() or path.stat().st_size == 0:
        raise ModelUnavailable(f"custom model {name!r} not found at {path} (CUSTOM_MODELS)")
    return path
