"""Small ONNX models built in the tests, to show the pipeline runs any model of the contract."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def linear_model(
    weights: tuple[float, ...] = (0.0, -0.02, 0.04, 0.0, -0.02),
    bias: float = 0.1,
    image_weight: float = 1e-4,
    output_rank: int = 1,
) -> bytes:
    """z = magnitudes · weights + bias + image_weight * mean(image): both inputs are used."""
    nodes = [
        helper.make_node("MatMul", ["magnitude", "w"], ["mw"]),
        helper.make_node("ReduceMean", ["image", "axes"], ["img_mean"], keepdims=0),
        helper.make_node("Mul", ["img_mean", "iw"], ["img_term"]),
        helper.make_node("Add", ["mw", "img_term"], ["sum"]),
        helper.make_node("Add", ["sum", "b"], ["z"] if output_rank == 1 else ["z1"]),
    ]
    if output_rank == 2:
        nodes.append(helper.make_node("Unsqueeze", ["z1", "one"], ["z"]))
    initializers = [
        numpy_helper.from_array(np.array(weights, dtype=np.float32), "w"),
        numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array(image_weight, dtype=np.float32), "iw"),
        numpy_helper.from_array(np.array(bias, dtype=np.float32), "b"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
    ]
    out_shape: list[str | int] = ["B"] if output_rank == 1 else ["B", 1]
    graph = helper.make_graph(
        nodes,
        "linear-photoz",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 5, 32, 32]),
            helper.make_tensor_value_info("magnitude", TensorProto.FLOAT, ["B", 5]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, out_shape)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def linear_prediction(
    images: np.ndarray,
    magnitudes: np.ndarray,
    weights: tuple[float, ...] = (0.0, -0.02, 0.04, 0.0, -0.02),
    bias: float = 0.1,
    image_weight: float = 1e-4,
) -> np.ndarray:
    """What :func:`linear_model` computes, in numpy, to check ONNX Runtime's answers."""
    mean = images.astype(np.float64).mean(axis=(1, 2, 3))
    result: np.ndarray = (
        magnitudes.astype(np.float64) @ np.array(weights) + bias + image_weight * mean
    )
    return result


def one_input_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["magnitude"], ["z"], keepdims=0)],
        "wrong",
        [helper.make_tensor_value_info("magnitude", TensorProto.FLOAT, ["B", 5])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data
