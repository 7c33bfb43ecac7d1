"""Running a photometric-redshift ONNX model with ONNX Runtime.

Any ONNX model fits that takes a batch of images ``[B, 5, 32, 32]`` float32 and a batch of
magnitudes ``[B, 5]`` float32 and returns one redshift per sample (``[B]`` or ``[B, 1]``).
Inputs are recognised by rank (4-D: images, 2-D: magnitudes), so their names are free. Any
preprocessing (flux scaling, normalisation) belongs inside the model, which keeps a model and
the way to feed it in one file.
"""

from __future__ import annotations

import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cosmicai.constants import BUILTIN_MODEL_PREFIX, ENV_ORT_ARENA, ENV_ORT_THREADS
from cosmicai.exceptions import CosmicAIError, ModelError, TransientStorageError
from cosmicai.storage import S3Storage, Storage

#: Built-in models the Lambda layer leaves out (function + layers must stay under 250 MB
#: unzipped); a deployment loads them from S3 instead.
NOT_IN_LAYER = ("astromae",)


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota.

    ``os.cpu_count()`` reports the host's cores, which on Lambda or in a container is not the
    share the function was given."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def default_threads() -> int:
    """Intra-op threads: ``COSMICAI_ORT_THREADS`` if set, else every CPU available."""
    value = os.environ.get(ENV_ORT_THREADS, "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise ModelError(f"{ENV_ORT_THREADS} must be a whole number, not {value!r}") from None
    return available_cpus()


def default_arena() -> bool:
    """ORT's CPU memory arena: on unless ``COSMICAI_ORT_ARENA=0``. Measured on AstroMAE
    (docs/astromae.md): a fresh worker's peak RSS over 10 batches of 512 was 362 MiB with the
    arena and 578-590 without it (INT8; fp32 474 vs 606-758), at the same speed; without it
    the allocator keeps freed batch buffers mapped."""
    return os.environ.get(ENV_ORT_ARENA, "1").strip().lower() not in ("0", "false", "off", "no")


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
            hint = ""
            if name in NOT_IN_LAYER:
                hint = (
                    f" ({name} is left out of the Lambda layer for size: upload "
                    f"src/cosmicai/models/{name}.onnx and name it as s3://BUCKET/KEY)"
                )
            raise ModelError(f"unknown built-in model {name!r}; have {sorted(models)}{hint}")
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

    def __init__(
        self,
        model: bytes,
        *,
        threads: int | None = None,
        name: str = "model",
        arena: bool | None = None,
    ):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Explicit thread counts: ORT's default sizes its pools from the host's cores, which on
        # Lambda is not the vCPU share the function was given.
        self.threads = threads or default_threads()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_cpu_mem_arena = default_arena() if arena is None else arena
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


def get_model(
    spec: str, *, threads: int | None = None, storage: Storage | None = None
) -> RedshiftModel:
    """A session for ``spec``, reused across invocations of a warm Lambda container;
    ``threads`` None means :func:`default_threads`."""
    threads = threads or default_threads()
    cached = _CACHE.get((spec, threads))
    if cached is None:
        cached = RedshiftModel(load_model_bytes(spec, storage), threads=threads, name=spec)
        _CACHE[(spec, threads)] = cached
    return cached
