"""INT8 quantization of a photo-z ONNX model, accepted only if it keeps its accuracy.

What is quantized was chosen by measurement on AstroMAE (see docs/astromae.md):

- only MatMul, Gemm and ORT's fused ``Attention`` (the ViT, the MLPs; ``Attention`` becomes
  ``QAttention``, its QKV projection in 8 bits): ONNX Runtime's integer convolutions ran slower
  than its fp32 ones on these CPUs, so convolutions stay fp32;
- signed 8-bit weights (faster than unsigned with VNNI);
- the first layer of the magnitude MLP stays fp32 (``DEFAULT_EXCLUDE``): 8-bit activations of
  magnitudes have a step too coarse for the colours photo-z depends on.

``dynamic`` computes activation ranges per batch at run time; ``static`` calibrates them once on
training galaxies, which makes a prediction independent of the rest of its batch.

The guard compares the candidate with the fp32 model on the same rendered test galaxies and
refuses it when MAE grows by more than ``max_mae_increase`` or NMAD by more than
``max_nmad_increase`` (relative).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cosmicai.exceptions import ModelError
from cosmicai.metrics import RedshiftMetrics, redshift_metrics
from cosmicai.model import RedshiftModel

Method = Literal["dynamic", "static"]
#: Node-name prefixes left in fp32: the magnitude MLP's first layer (raw-scale inputs).
DEFAULT_EXCLUDE = ("/magnitude_mlp/magnitude_mlp.0/",)
MAX_MAE_INCREASE = 0.02
MAX_NMAD_INCREASE = 0.03


@dataclass(frozen=True)
class Split:
    images: npt.NDArray[np.float32]
    magnitudes: npt.NDArray[np.float32]
    redshift: npt.NDArray[Any]

    @classmethod
    def rendered(cls, split: Literal["train", "test"], samples: int, seed: int) -> Split:
        """Galaxies of a split as the project renders them (test: seed 2000, train: 1000)."""
        from cosmicai.data.synth import render_split

        parts = list(render_split(split, samples, seed, 1))
        return cls(
            images=np.concatenate([p.images for p in parts]),
            magnitudes=np.concatenate([p.magnitudes for p in parts]).astype(np.float32),
            redshift=np.concatenate([p.redshift for p in parts if p.redshift is not None]),
        )


def predict(model: RedshiftModel, data: Split, batch: int = 256) -> npt.NDArray[np.float32]:
    return np.concatenate(
        [
            model.predict(data.images[i : i + batch], data.magnitudes[i : i + batch])
            for i in range(0, len(data.redshift), batch)
        ]
    )


def evaluate(model: bytes, data: Split, *, threads: int = 1) -> RedshiftMetrics:
    metrics = redshift_metrics(data.redshift, predict(RedshiftModel(model, threads=threads), data))
    if metrics is None:
        raise ModelError("the evaluation split has no known redshifts")
    return metrics


@dataclass(frozen=True)
class GuardResult:
    fp32: RedshiftMetrics
    int8: RedshiftMetrics
    mae_change: float
    nmad_change: float
    max_mae_increase: float
    max_nmad_increase: float

    @property
    def passed(self) -> bool:
        return (
            self.mae_change <= self.max_mae_increase and self.nmad_change <= self.max_nmad_increase
        )


def accuracy_guard(
    fp32: bytes,
    candidate: bytes,
    data: Split,
    *,
    max_mae_increase: float = MAX_MAE_INCREASE,
    max_nmad_increase: float = MAX_NMAD_INCREASE,
    threads: int = 1,
    fp32_metrics: RedshiftMetrics | None = None,
) -> GuardResult:
    """Both models' metrics on ``data`` and the relative changes the guard judges
    (``fp32_metrics``: the fp32 model's, when already measured on ``data``)."""
    a = fp32_metrics or evaluate(fp32, data, threads=threads)
    b = evaluate(candidate, data, threads=threads)
    return GuardResult(
        fp32=a,
        int8=b,
        mae_change=b.mae / a.mae - 1 if a.mae > 0 else float("inf"),
        nmad_change=b.nmad / a.nmad - 1 if a.nmad > 0 else float("inf"),
        max_mae_increase=max_mae_increase,
        max_nmad_increase=max_nmad_increase,
    )


def _nodes(model_path: Path, exclude: tuple[str, ...]) -> tuple[list[str], list[str]]:
    import onnx

    graph = onnx.load(str(model_path)).graph
    matmuls = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    excluded = [n for n in matmuls if n.startswith(exclude)]
    return matmuls, excluded


class _Calibration:
    """Feeds training galaxies to the static calibrator, one batch at a time."""

    def __init__(self, data: Split, names: tuple[str, str], batch: int = 64) -> None:
        self._batches: Iterator[dict[str, npt.NDArray[np.float32]]] = iter(
            {
                names[0]: data.images[i : i + batch],
                names[1]: data.magnitudes[i : i + batch],
            }
            for i in range(0, len(data.redshift), batch)
        )

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - ORT's interface; calibrated once
        raise NotImplementedError


def quantize(
    fp32: bytes,
    *,
    method: Method = "dynamic",
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
    calibration: Split | None = None,
) -> bytes:
    """An INT8 copy of ``fp32`` (MatMul/Gemm/Attention, s8 weights, ``exclude`` kept fp32)."""
    # ORT's quantizer advises "pre-processing" on the root logger at every call; the graph
    # is already optimised by the exporter, so the advice is noise on the command line.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return _quantize(fp32, method, exclude, calibration)
    finally:
        root.setLevel(level)


def _quantize(
    fp32: bytes, method: Method, exclude: tuple[str, ...], calibration: Split | None
) -> bytes:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="cosmicai-quantize-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        # ONNX's own shape inference knows no com.microsoft op, so the tensors after a fused
        # Attention would have no type (no calibration range, no quantization). ORT's symbolic
        # shape inference knows them; nothing else in the graph is changed here.
        quant_pre_process(src, src, skip_optimization=True)
        _, excluded = _nodes(src, exclude)
        if method == "dynamic":
            quantize_dynamic(
                src,
                dst,
                op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                # The dynamic quantizer rewrites Gemm as MatMul + Add before it looks at
                # exclusions, under the Gemm's name + "_MatMul".
                nodes_to_exclude=[*excluded, *(f"{n}_MatMul" for n in excluded)],
                weight_type=QuantType.QInt8,
            )
        else:
            if calibration is None:
                raise ModelError("static quantization needs calibration data")
            session = RedshiftModel(fp32, name="calibration")
            quantize_static(
                src,
                dst,
                _Calibration(calibration, (session.image_input, session.magnitude_input)),
                quant_format=QuantFormat.QOperator,
                op_types_to_quantize=["MatMul", "Gemm"],
                nodes_to_exclude=excluded,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        return dst.read_bytes()
