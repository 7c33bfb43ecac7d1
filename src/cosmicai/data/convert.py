"""Convert the original CosmicAI ``N.pt`` partitions into cosmicai partitions.

The original CosmicAI stores each partition as ``N.pt``, written by
``torch.save(TensorDataset(images, magnitudes, redshifts))`` with images ``[N, 5, 32, 32]``,
magnitudes ``[N, 5]`` and redshifts ``[N]`` (float32 or float64). This module turns each into
one ``N.safetensors`` partition (:mod:`cosmicai.data.format`) under a :class:`Location`.

Safety: a ``.pt`` file is a pickle, and unpickling an untrusted pickle can run any code. The
files are therefore loaded with ``torch.load(..., weights_only=True)``, whose unpickler builds
only tensors, containers and primitives, plus ``TensorDataset``, which we allow explicitly;
anything else (an arbitrary class or function reference) is refused before it is called.
``weights_only=False`` is never used.

torch is only needed here, so it is an optional extra (``pip install 'cosmicai[convert]'``)
imported inside the functions: the rest of cosmicai, including the Lambda image, runs
without it.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cosmicai.data.format import IMAGE_SHAPE, Partition, encode_partition, partition_key
from cosmicai.exceptions import PartitionFormatError
from cosmicai.storage import Location

if TYPE_CHECKING:
    import torch

#: Raised (as ImportError) when torch, an optional extra, is not installed.
TORCH_REQUIRED_MESSAGE = (
    "converting CosmicAI .pt partitions needs torch: pip install 'cosmicai[convert]'"
)

#: Suffix of the original CosmicAI partition files.
PT_SUFFIX = ".pt"

#: Object ids are ``partition number * OBJECT_ID_STRIDE + index within the partition``. The
#: .pt files carry no ids, yet cosmicai promises ids unique within a dataset; this scheme gives
#: that as long as no partition holds OBJECT_ID_STRIDE samples or more (checked), and an id
#: still tells a reader which source partition and row a prediction came from.
OBJECT_ID_STRIDE = 10_000_000

_INT64_MAX = int(np.iinfo(np.int64).max)
_FLOAT_DTYPES = ("float32", "float64")
_TENSOR_NAMES = ("images", "magnitudes", "redshifts")
# The dict layout is accepted with either spelling of the redshift key, since both occur in
# CosmicAI-derived code ("redshift" is also the tensor name in our own format).
_REDSHIFT_KEYS = ("redshift", "redshifts")
# torch's weights-only refusal is a long paragraph that, among other things, suggests retrying
# with weights_only=False; only the line saying what was refused belongs in our error.
_WEIGHTS_REFUSAL = re.compile(r"WeightsUnpickler error:\s*(.*?\.)(?:\s|$)", re.DOTALL)


@dataclass(frozen=True)
class ConvertedPartition:
    """One ``.pt`` file written as one partition."""

    source: Path
    number: int
    key: str
    samples: int
    bytes: int


def convert_pt_file(path: str | Path) -> Partition:
    """Load one CosmicAI ``N.pt`` file safely and return it as a :class:`Partition`.

    Object ids are ``N * OBJECT_ID_STRIDE + index``, N taken from the file name. Any file that
    is not a readable CosmicAI partition raises :class:`PartitionFormatError` naming the file
    and what is wrong with it; a missing or unreadable file raises the OSError that names it.
    """
    _require_torch()
    path = Path(path)
    number = pt_partition_number(path)
    loaded, sha256 = _load_pt(path)
    images_t, magnitudes_t, redshifts_t = _tensors_of(loaded, path)

    images = _as_float32(images_t, "images", path)
    if images.ndim != 1 + len(IMAGE_SHAPE) or images.shape[1:] != IMAGE_SHAPE:
        raise PartitionFormatError(
            f"{path}: images has shape {images.shape}, expected {_pattern('N', *IMAGE_SHAPE)}"
        )
    samples = images.shape[0]
    magnitudes = _as_float32(magnitudes_t, "magnitudes", path)
    redshifts = _as_float32(redshifts_t, "redshifts", path)
    for name, array, tail in (("magnitudes", magnitudes, (5,)), ("redshifts", redshifts, ())):
        if array.shape != (samples, *tail):
            raise PartitionFormatError(
                f"{path}: {name} has shape {array.shape}, expected {_pattern('N', *tail)} "
                f"with N = {samples}, the number of images"
            )
    # NaN redshifts are kept: in CosmicAI data they mean "unknown", not "corrupt".

    return Partition(
        images=images,
        magnitudes=magnitudes,
        object_id=_object_ids(number, samples, path),
        redshift=redshifts,
        provenance={"source": "cosmicai-pt", "file": path.name, "sha256": sha256},
    )


def convert_pt_files(
    files: Sequence[str | Path],
    out: Location,
    *,
    on_progress: Callable[[str], None] | None = None,
) -> list[ConvertedPartition]:
    """Convert every ``N.pt`` in ``files`` to partition ``N`` under ``out``; report each.

    Files are converted and written one at a time, so memory holds one partition, not the
    dataset. Consequently a bad file raises after the files before it were written. Each
    written partition is whole (``Storage.put`` is atomic) and valid, so re-running after fixing
    or removing the bad file simply rewrites them; no partition is ever half-written. The file
    names are checked before anything is written, though: a name that is not ``N.pt`` or two
    files with the same N (which would overwrite each other and share object ids) fail the
    whole call up front.

    No dataset index is written here; that is the job of whoever assembles the dataset.
    """
    _require_torch()
    paths = [Path(f) for f in files]
    numbers = [pt_partition_number(p) for p in paths]
    first_with: dict[int, Path] = {}
    for path, number in zip(paths, numbers, strict=True):
        if number in first_with:
            raise PartitionFormatError(
                f"{path} and {first_with[number]} are both partition {number}; "
                "a dataset holds each partition number once"
            )
        first_with[number] = path

    converted: list[ConvertedPartition] = []
    for path, number in zip(paths, numbers, strict=True):
        partition = convert_pt_file(path)
        samples = partition.samples
        data = encode_partition(partition)
        # Dropped before the next file loads, so at most one partition is held at a time.
        del partition
        key = partition_key(out.prefix, number)
        out.storage.put(out.bucket, key, data)
        done = ConvertedPartition(
            source=path, number=number, key=key, samples=samples, bytes=len(data)
        )
        converted.append(done)
        if on_progress is not None:
            on_progress(
                f"{path} -> {out.bucket}/{key}: {samples} samples, {len(data)} bytes "
                f"({len(converted)}/{len(paths)})"
            )
    return converted


def pt_partition_number(path: str | Path) -> int:
    """N of a CosmicAI partition file ``N.pt``; PartitionFormatError for any other name."""
    path = Path(path)
    stem = path.name[: -len(PT_SUFFIX)] if path.name.endswith(PT_SUFFIX) else ""
    # isascii as well as isdigit: str.isdigit accepts "²" and other non-ASCII digits.
    if not (stem.isascii() and stem.isdigit()) or int(stem) < 1:
        raise PartitionFormatError(
            f"{path}: a CosmicAI partition file is named N.pt with N a positive integer "
            f"(its partition number), got {path.name!r}"
        )
    return int(stem)


def _require_torch() -> None:
    """Fail with an install hint if torch is missing; the helpers then import it plainly."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ImportError(TORCH_REQUIRED_MESSAGE) from exc


def _load_pt(path: Path) -> tuple[object, str]:
    """The unpickled contents of ``path`` (weights-only) and the SHA-256 of its bytes.

    The bytes are read once and both hashed and loaded from memory, so the digest in the
    provenance is that of exactly the data converted; they are freed when this returns.
    """
    import torch
    from torch.utils.data import TensorDataset

    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        with torch.serialization.safe_globals([TensorDataset]):
            # map_location: a partition saved from a GPU must still load on a CPU-only host.
            loaded: object = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        # torch reports corruption as RuntimeError, ValueError, EOFError, UnpicklingError...
        # depending on where the bytes stop making sense; to the caller all are one fault.
        raise PartitionFormatError(
            f"{path} is not a loadable CosmicAI .pt partition: {_describe_load_error(exc)}"
        ) from exc
    return loaded, sha256


def _describe_load_error(exc: Exception) -> str:
    message = str(exc)
    refused = _WEIGHTS_REFUSAL.search(message)
    if refused is not None:
        return f"it holds objects other than tensors, refused unexecuted ({refused.group(1)})"
    first_line = message.strip().splitlines()[0] if message.strip() else ""
    return f"{type(exc).__name__}: {first_line[:300]}"


def _tensors_of(loaded: object, path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, magnitudes, redshifts) from a TensorDataset, a 3-sequence or a dict."""
    import torch
    from torch.utils.data import TensorDataset

    found: Sequence[object]
    if isinstance(loaded, TensorDataset):
        # TensorDataset's attribute, as set by the unpickler from the file's own state, so
        # it is validated like any other content rather than trusted to be a tuple.
        held: object = loaded.__dict__.get("tensors")
        if not isinstance(held, tuple | list):
            raise PartitionFormatError(
                f"{path}: TensorDataset holds {_describe(held)} instead of a tuple of tensors"
            )
        found, container = held, "TensorDataset"
    elif isinstance(loaded, tuple | list):
        found, container = loaded, type(loaded).__name__
    elif isinstance(loaded, Mapping):
        found, container = _from_mapping(loaded, path), "dict"
    else:
        raise PartitionFormatError(
            f"{path}: expected a TensorDataset of (images, magnitudes, redshifts), "
            f"found {_describe(loaded)}"
        )
    if len(found) != 3:
        raise PartitionFormatError(
            f"{path}: {container} holds {len(found)} item(s), expected 3 tensors "
            f"(images, magnitudes, redshifts)"
        )
    tensors: list[torch.Tensor] = []
    for name, item in zip(_TENSOR_NAMES, found, strict=True):
        if not isinstance(item, torch.Tensor):
            raise PartitionFormatError(f"{path}: {name} is {_describe(item)}, expected a tensor")
        tensors.append(item)
    return tensors[0], tensors[1], tensors[2]


def _from_mapping(loaded: Mapping[Any, Any], path: Path) -> list[object]:
    keys = set(loaded)
    redshift_keys = [k for k in _REDSHIFT_KEYS if k in keys]
    # Exactly these keys: a file with more would have data we silently dropped, and one with
    # both redshift spellings leaves no way to know which is meant.
    if len(redshift_keys) != 1 or keys != {"images", "magnitudes", redshift_keys[0]}:
        raise PartitionFormatError(
            f"{path}: dict has keys {sorted(map(str, keys))}, expected images, magnitudes "
            f"and redshift (or redshifts)"
        )
    return [loaded["images"], loaded["magnitudes"], loaded[redshift_keys[0]]]


def _as_float32(tensor: torch.Tensor, name: str, path: Path) -> npt.NDArray[np.float32]:
    import torch

    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in _FLOAT_DTYPES:
        raise PartitionFormatError(
            f"{path}: {name} has dtype {dtype}, expected one of {', '.join(_FLOAT_DTYPES)}"
        )
    if tensor.layout != torch.strided:
        raise PartitionFormatError(f"{path}: {name} is a {tensor.layout} tensor, expected dense")
    try:
        # detach: a tensor saved with requires_grad=True refuses .numpy() otherwise. The array
        # may share memory with the tensor; nothing else holds the tensor, so that is free.
        array: npt.NDArray[np.float32] = np.ascontiguousarray(
            tensor.detach().to(dtype=torch.float32).numpy()
        )
    except (RuntimeError, TypeError) as exc:
        # Tensors without CPU data (e.g. on the "meta" device) cannot become arrays.
        raise PartitionFormatError(f"{path}: {name} cannot be read as an array: {exc}") from exc
    return array


def _pattern(*dims: int | str) -> str:
    return f"({', '.join(map(str, dims))})"


def _object_ids(number: int, samples: int, path: Path) -> npt.NDArray[np.int64]:
    if samples >= OBJECT_ID_STRIDE:
        raise PartitionFormatError(
            f"{path}: {samples} samples; object ids (N * {OBJECT_ID_STRIDE} + index) are only "
            f"unique for partitions of fewer than {OBJECT_ID_STRIDE} samples"
        )
    if number * OBJECT_ID_STRIDE + OBJECT_ID_STRIDE - 1 > _INT64_MAX:
        raise PartitionFormatError(
            f"{path}: partition number {number} is too large for 64-bit object ids"
        )
    return number * OBJECT_ID_STRIDE + np.arange(samples, dtype=np.int64)


def _describe(value: object) -> str:
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    if isinstance(value, Mapping):
        return f"a dict with keys {sorted(map(str, value))}"
    return f"a {type(value).__module__}.{type(value).__qualname__}"
