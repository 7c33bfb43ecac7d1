"""Running a photometric-redshift ONNX model with ONNX Runtime.

Any ONNX model fits that takes a batch of images ``[B, 5, 32, 32]`` float32 and a batch of
magnitudes ``[B, 5]`` float32 and returns one redshift per sample (``[B]`` or ``[B, 1]``).
Inputs are recognised by rank (4-D: images, 2-D: magnitudes), so their names are free. Any
preprocessing (flux scaling, normalisation) belongs inside the model, which keeps a model and
the way to feed it in one file.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cosmicai.constants import BUILTIN_MODEL_PREFIX
from cosmicai.exceptions import CosmicAIError, ModelError, TransientStorageError
from cosmicai.storage import S3Storage, Storage


def builtin_models() -> dict[str, Path]:
    """Models shipped inside the package, by name (``builtin:<name>`` in a request)."""
    folder = resources.files("cosmicai") / "models"
    found: dict[str, Path] = {}
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.endswith(".onnx"):
                found[entry.name.removesuffix(".onnx")] = Path(str(entry))
    return found


def load_model_bytes(spec: str, storage: Storage | None = None) -> bytes:
    """The ONNX file named by ``spec``: ``builtin:NAME``, ``s3://bucket/key`` or a path."""
    if spec.startswith(BUILTIN_MODEL_PREFIX):
        name = spec[len(BUILTIN_MODEL_PREFIX) :]
        models = builtin_models()
        if name not in models:
            raise ModelError(f"unknown built-in model {name!r}; have {sorted(models)}")
        return models[name].read_bytes()
    if spec.startswith("s3://"):
        bucket, _, key = spec[len("s3://") :].partition("/")
        s3 = storage if isinstance(storage, S3Storage) else S3Storage()
        try:
            return bytes(s3.get(bucket, key))
        except TransientStorageError:
            raise  # S3 said "not now": the model is not at fault, and a retry may succeed
        except CosmicAIError as exc:
            raise ModelError(f"cannot load model {spec}: {exc}") from exc
    try:
        return Path(spec).read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot load model {spec}: {exc.strerror}") from exc


class RedshiftModel:
    """An ONNX Runtime session with its image and magnitude inputs identified."""

    def __init__(self, model: bytes, *, threads: int = 1, name: str = "model"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Explicit thread counts: ORT's default sizes its pools from the host's cores, which on
        # Lambda is not the vCPU share the function was given.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(
                model, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own untyped errors for bad files
            raise ModelError(f"{name} is not a loadable ONNX model: {exc}") from exc
        self.name = name
        inputs = {i.name: len(i.shape) for i in self.session.get_inputs()}
        images = [n for n, rank in inputs.items() if rank == 4]
        magnitudes = [n for n, rank in inputs.items() if rank == 2]
        if len(inputs) != 2 or len(images) != 1 or len(magnitudes) != 1:
            raise ModelError(
                f"{name} must take two inputs, images [B,5,32,32] and magnitudes [B,5]; "
                f"it takes {', '.join(f'{n} (rank {r})' for n, r in inputs.items())}"
            )
        self.image_input, self.magnitude_input = images[0], magnitudes[0]
        self.output = self.session.get_outputs()[0].name

    def predict(
        self, images: npt.NDArray[np.float32], magnitudes: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """One redshift per sample, float32 ``[B]``."""
        try:
            (result,) = self.session.run(
                [self.output], {self.image_input: images, self.magnitude_input: magnitudes}
            )
        except Exception as exc:  # ORT's errors are untyped; the model is what failed
            raise ModelError(f"{self.name} failed on a batch: {exc}") from exc
        prediction: npt.NDArray[Any] = np.asarray(result, dtype=np.float32)
        if prediction.size != len(images):
            raise ModelError(
                f"{self.name} returned {prediction.shape} for a batch of {len(images)}; "
                "expected one redshift per sample"
            )
        return prediction.reshape(len(images))


_CACHE: dict[tuple[str, int], RedshiftModel] = {}


def get_model(spec: str, *, threads: int = 1, storage: Storage | None = None) -> RedshiftModel:
    """A session for ``spec``, reused across invocations of a warm Lambda container."""
    cached = _CACHE.get((spec, threads))
    if cached is None:
        cached = RedshiftModel(load_model_bytes(spec, storage), threads=threads, name=spec)
        _CACHE[(spec, threads)] = cached
    return cached
