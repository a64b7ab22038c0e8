"""Small ONNX models built here, run by the worker as CUSTOM_MODELS (u2net-family handling):
input 1x3x320x320, first output 1x1x320x320, a fixed map whatever the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def fixed_map_model(path: Path, box: tuple[int, int, int, int] | None = None) -> Path:
    """A model whose output is 1.0 inside `box` (left, top, right, bottom on the 320x320 map)
    and 0 elsewhere; no box: all zeros, an empty mask. The input goes through a zero-weight
    convolution, so the graph uses it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    target = np.zeros((1, 1, 320, 320), dtype=np.float32)
    if box is not None:
        left, top, right, bottom = box
        target[:, :, top:bottom, left:right] = 1.0
    weights = numpy_helper.from_array(np.zeros((1, 3, 1, 1), dtype=np.float32), "weights")
    constant = numpy_helper.from_array(target, "map")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input.1", "weights"], ["zeros"]),
            helper.make_node("Add", ["zeros", "map"], ["mask"]),
        ],
        "fixed_map",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 320, 320])],
        initializer=[weights, constant],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
