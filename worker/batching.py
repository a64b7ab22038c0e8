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


@dataclass(slots=True)
class _Pending:
    tensor: np.ndarray
    future: asyncio.Future[np.ndarray] = field(repr=False)


class MicroBatcher:
    def __init__(
        self, session: Any, executor: Executor, max_batch: int, max_wait_seconds: float
    ) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_seconds
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.batch_sizes: list[int] = []  # recent sizes, for tests and logs

    async def infer(self, tensor: np.ndarray) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(tensor, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0 and self._queue.empty():
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(0, remaining)))
                except TimeoutError:
                    break
            batch = [item for item in batch if not item.future.cancelled()]
            if not batch:
                continue
            self.batch_sizes = [*self.batch_sizes[-99:], len(batch)]
            stacked = np.concatenate([item.tensor for item in batch])
            try:
                outputs = await loop.run_in_executor(self.executor, self._run, stacked)
            except Exception as exc:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for index, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result(outputs[index : index + 1])

    def _run(self, stacked: np.ndarray) -> np.ndarray:
        output: np.ndarray = self.session.run([self.output_name], {self.input_name: stacked})[0]
        return output
