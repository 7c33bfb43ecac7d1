"""The speed AstroMAE could reach on this machine if it were nothing but its quantized layers.

Each of the network's linear layers (:func:`cosmicai.astromae.config.products`: the ViT's
QKV, projection and MLP, the branch heads, the magnitude MLP and the head; 91.8% of its
multiply-accumulates) is timed alone, as one ONNX Runtime node at the shape a batch gives it:
``DynamicQuantizeMatMul`` with signed 8-bit weights, activations quantized on the fly, as the
INT8 model runs them, or fp32 ``MatMul``. The sum of those times for one batch is a ceiling: the
network also convolves, computes attention scores, normalises, applies GELU and softmax and
pools, all of which is free here. A measured throughput against this ceiling says how much of
the gap to a target is the engine's and how much is the CPU's.

Each layer is timed at its best of a few repetitions (a ceiling, not a typical speed); the
machine drifts, so the ceiling is measured in the same run as the throughput it is compared with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cosmicai.astromae.config import AstroMAEConfig, Product, products

Runner = Callable[[], Any]


def _session(graph: Any, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        graph.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _runner(int8: bool, m: int, k: int, n: int, threads: int) -> Runner:
    """One node computing an ``m × k`` by ``k × n`` product with constant weights, ready to run:
    ``DynamicQuantizeMatMul`` (s8 weights, activations quantized per call) or fp32 ``MatMul``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    feeds = {"A": rng.standard_normal((m, k)).astype(np.float32)}
    if int8:
        initializers = [
            numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "W"),
            numpy_helper.from_array(np.array(0.01, np.float32), "scale"),
            numpy_helper.from_array(np.array(0, np.int8), "zero"),
        ]
        node = helper.make_node(
            "DynamicQuantizeMatMul", ["A", "W", "scale", "zero"], ["Y"], domain="com.microsoft"
        )
    else:
        initializers = [
            numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")
        ]
        node = helper.make_node("MatMul", ["A", "W"], ["Y"])
    graph = helper.make_graph(
        [node],
        "product",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])],
        initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    session = _session(model, threads)
    return lambda: session.run(None, feeds)


def best_seconds(run: Runner, *, repeats: int = 3, min_s: float = 0.05) -> float:
    """The fastest mean time of one call over ``repeats`` timed stretches of ``min_s`` each."""
    run()  # first call: allocations, weight packing
    best = float("inf")
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            run()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_s:
                break
        best = min(best, elapsed / calls)
    return best


def _product_seconds(
    p: Product, batch: int, *, int8: bool, threads: int, cache: dict[tuple[Any, ...], float]
) -> float:
    """Seconds ``batch`` galaxies spend in layer ``p`` (all ``p.count`` of it); layers of the
    same shape are timed once."""
    key = (int8, p.rows * batch, p.k, p.n)
    if key not in cache:
        cache[key] = best_seconds(_runner(int8, p.rows * batch, p.k, p.n, threads))
    return p.count * cache[key]


def ceiling(
    batch: int, *, threads: int = 1, config: AstroMAEConfig | None = None
) -> dict[str, Any]:
    """Samples/s of AstroMAE's quantized layers alone, each as fast as it runs by itself:
    ``int8`` as the INT8 model computes them, ``fp32`` as the fp32 model does. Everything
    else the network does (91.8% of its MACs are in these layers at the default widths) is
    taken as free, so no engine running the whole network on this CPU can beat them."""
    every = products(config)
    listed = [p for p in every if p.kind == "linear"]
    macs = sum(p.macs for p in every)
    cache: dict[tuple[Any, ...], float] = {}
    rows = []
    totals = {"int8": 0.0, "fp32": 0.0}
    for p in listed:
        row: dict[str, Any] = {"name": p.name, "rows": p.rows, "k": p.k, "n": p.n, "count": p.count}
        for label, int8 in (("int8", True), ("fp32", False)):
            seconds = _product_seconds(p, batch, int8=int8, threads=threads, cache=cache)
            totals[label] += seconds
            row[f"{label}_gmac_per_s"] = p.macs * batch / seconds / 1e9
        rows.append(row)
    linear = sum(p.macs for p in listed)
    return {
        "batch": batch,
        "threads": threads,
        "macs_per_galaxy": macs,
        "quantized_share_of_macs": linear / macs,
        "int8_samples_per_s": batch / totals["int8"],
        "fp32_samples_per_s": batch / totals["fp32"],
        "int8_gmac_per_s": linear * batch / totals["int8"] / 1e9,
        "fp32_gmac_per_s": linear * batch / totals["fp32"] / 1e9,
        "products": rows,
    }
