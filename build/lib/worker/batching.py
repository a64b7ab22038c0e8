"""Micro-batching for the GPU: when several jobs are ready at once, run them through the model as
one batch. rembg's bundled u2net-family files declare a fixed batch of 1; the graph is fully
convolutional, so declaring the batch dimension symbolic is enough (tests check that batched
masks equal batch-1 masks). Pre- and post-processing stay per image, so rembg's per-image
normalisation is kept. The wait for a batch to fill is bounded (BATCH_WAIT_MS), so a lone job
at light load waits at most that long."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from prometheus_client import Histogram

log = structlog.get_logger(__name__)


def with_symbolic_batch(model_path: Path) -> bytes:
    """The model's bytes with dimension 0 of every graph input and output named `batch`."""
    import onnx

    model = onnx.load(str(model_path))
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    serialized: bytes = model.SerializeToString()
    return serialized


class BatcherStopped(RuntimeError):
    """The batching loop ended (crashed or was stopped) while this input waited for a run."""


@dataclass(slots=True)
class _Pending:
    tensor: np.ndarray
    future: asyncio.Future[np.ndarray] = field(repr=False)


class MicroBatcher:
    """`run` is the batching loop (supervised by the app); `infer` hands it one input and waits
    for that input's output. If the loop ends for any reason, every input it held or that was
    queued fails with BatcherStopped, so no caller waits on a loop that is gone."""

    def __init__(
        self,
        session: Any,
        executor: Executor,
        max_batch: int,
        max_wait_seconds: float,
        batch_sizes: Histogram,
    ) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_seconds
        self.batch_sizes = batch_sizes
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()

    async def infer(self, tensor: np.ndarray) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(tensor, future))
        return await future

    async def run(self) -> None:
        held: list[_Pending] = []
        try:
            while True:
                held = [await self._queue.get()]
                await self._fill(held)
                await self._serve([item for item in held if not item.future.cancelled()])
                held = []
        except BaseException as exc:
            self._fail_waiting(held, exc)
            raise

    async def _fill(self, batch: list[_Pending]) -> None:
        """Add what arrives within BATCH_WAIT_MS of the first input, up to BATCH_SIZE."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0 and self._queue.empty():
                return
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), max(0, remaining)))
            except TimeoutError:
                return

    async def _serve(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        self.batch_sizes.observe(len(batch))
        try:
            stacked = np.concatenate([item.tensor for item in batch])
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self.executor, self._run, stacked)
        except Exception as exc:  # this batch's inputs fail (transient); the loop goes on
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for index, item in enumerate(batch):
            if not item.future.done():
                item.future.set_result(outputs[index : index + 1])

    def _fail_waiting(self, held: list[_Pending], exc: BaseException) -> None:
        waiting = [*held]
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        reason = "stopped" if isinstance(exc, asyncio.CancelledError) else f"crashed: {exc!r}"
        for item in waiting:
            if not item.future.done():
                item.future.set_exception(BatcherStopped(f"the micro-batcher {reason}"))

    def _run(self, stacked: np.ndarray) -> np.ndarray:
        output: np.ndarray = self.session.run([self.output_name], {self.input_name: stacked})[0]
        return output
