"""AstroMAE checkpoint → ONNX, checked by the ONNX checker and against torch on a fixed batch."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from cosmicai.astromae.checkpoint import load_checkpoint
from cosmicai.astromae.network import AstroMAE, AstroMAEConfig
from cosmicai.exceptions import ModelError
from cosmicai.fusion import fuse_attention

#: The newest opset torch's TorchScript exporter writes; ORT runs it with every fusion it has.
OPSET = 20
#: Largest |z_ORT − z_torch| an export may show on the parity batch.
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportResult:
    path: Path
    bytes: int
    parameters: int
    max_abs_diff: float
    parity_samples: int
    #: ViT blocks whose attention became one ONNX Runtime ``Attention`` node.
    fused_attention: int


def parity_batch(samples: int = 64) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """A fixed, realistic batch: the first rendered test galaxies (seed 0)."""
    from cosmicai.data.synth import render_chunk

    part = render_chunk("test", 0, samples, 0)
    return part.images, part.magnitudes.astype(np.float32)


def to_onnx_bytes(model: AstroMAE) -> bytes:
    c = model.config
    example = (
        torch.zeros(2, c.channels, c.image_size, c.image_size),
        torch.full((2, c.channels), 18.0),
    )
    buffer = io.BytesIO()
    torch.onnx.export(
        model.eval(),
        example,
        buffer,  # type: ignore[arg-type]  # a file object is accepted, the stub says path only
        input_names=["image", "magnitude"],
        output_names=["redshift"],
        dynamic_axes={"image": {0: "batch"}, "magnitude": {0: "batch"}, "redshift": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    return buffer.getvalue()


def check_parity(model: AstroMAE, onnx_bytes: bytes, samples: int = 64) -> float:
    """Max |Δz| between ONNX Runtime and torch (fp32) on the fixed batch."""
    from cosmicai.model import RedshiftModel

    images, magnitudes = parity_batch(samples)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(images), torch.from_numpy(magnitudes)).numpy()
    got = RedshiftModel(onnx_bytes, name="export").predict(images, magnitudes)
    return float(np.max(np.abs(got - expected)))


def export_checkpoint(
    checkpoint: Path | AstroMAE,
    out: Path,
    *,
    config: AstroMAEConfig | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportResult:
    """Write ``out`` and return the parity figure; raise (and write nothing) if it fails."""
    import onnx

    model = checkpoint if isinstance(checkpoint, AstroMAE) else load_checkpoint(checkpoint, config)
    data, fused = fuse_attention(to_onnx_bytes(model), model.config.heads)
    if fused != model.config.depth:
        raise ModelError(
            f"fused the attention of {fused} of {model.config.depth} ViT blocks; the exporter's "
            "graph no longer has the expected shape"
        )
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except Exception as exc:
        raise ModelError(f"the exported graph fails the ONNX checker: {exc}") from exc
    diff = check_parity(model, data)
    if not diff <= tolerance:
        raise ModelError(
            f"ONNX Runtime and torch disagree: max |Δz| {diff:.3g} > {tolerance:g}; not written"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return ExportResult(
        path=out,
        bytes=len(data),
        parameters=sum(p.numel() for p in model.parameters()),
        max_abs_diff=diff,
        parity_samples=64,
        fused_attention=fused,
    )
