"""The partition format: one safetensors object per partition.

A partition is a standard safetensors file (https://github.com/huggingface/safetensors, format
described in its README: an 8-byte little-endian header length, a JSON header, then the raw
tensor bytes) holding:

=============  ========  ============  ===================================================
tensor         dtype     shape         meaning
=============  ========  ============  ===================================================
``images``     F32       [N, 5, 32,32] u, g, r, i, z cut-outs in nanomaggies per pixel
``magnitudes`` F32       [N, 5]        u, g, r, i, z magnitudes
``redshift``   F32       [N]           spectroscopic redshift (absent when unknown)
``object_id``  I64       [N]           object identifier, unique within a dataset
=============  ========  ============  ===================================================

and ``__metadata__`` (string to string, as safetensors requires) with ``format`` =
``cosmicai.partition``, ``schema_version``, ``samples`` and ``provenance`` (a JSON string).

Why safetensors: any tool reads it (Python, Rust, C++), there is no pickle to execute, and the
tensors sit at known offsets in one buffer, so a partition fetched from S3 into one bytes object
becomes numpy arrays without a second copy (:func:`decode_partition` returns views).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cosmicai.exceptions import PartitionFormatError
from cosmicai.storage import join_key

FORMAT_NAME = "cosmicai.partition"
SCHEMA_VERSION = 1
BANDS = ("u", "g", "r", "i", "z")
IMAGE_SHAPE = (5, 32, 32)
PARTITION_SUFFIX = ".safetensors"

#: Bytes one sample takes in a partition: image + magnitudes + redshift + object id.
BYTES_PER_SAMPLE = 4 * int(np.prod(IMAGE_SHAPE)) + 4 * 5 + 4 + 8

# A header larger than this is not one of ours (ours are well under 1 KB); refusing it early
# bounds the memory a hostile or corrupt object can make us spend on JSON parsing.
MAX_HEADER_BYTES = 1 << 20

_DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
}
_EXPECTED: dict[str, tuple[str, tuple[int, ...]]] = {
    # name: (dtype, shape after the sample axis)
    "images": ("F32", IMAGE_SHAPE),
    "magnitudes": ("F32", (5,)),
    "redshift": ("F32", ()),
    "object_id": ("I64", ()),
}
_OPTIONAL = frozenset({"redshift"})


@dataclass(frozen=True)
class Partition:
    """The arrays of one partition (views into the buffer it was decoded from)."""

    images: npt.NDArray[np.float32]
    magnitudes: npt.NDArray[np.float32]
    object_id: npt.NDArray[np.int64]
    redshift: npt.NDArray[np.float32] | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.object_id)
        problems = []
        if self.images.shape != (n, *IMAGE_SHAPE):
            problems.append(f"images has shape {self.images.shape}, expected {(n, *IMAGE_SHAPE)}")
        if self.magnitudes.shape != (n, 5):
            problems.append(f"magnitudes has shape {self.magnitudes.shape}, expected {(n, 5)}")
        if self.redshift is not None and self.redshift.shape != (n,):
            problems.append(f"redshift has shape {self.redshift.shape}, expected {(n,)}")
        if problems:
            raise PartitionFormatError("; ".join(problems))

    @property
    def samples(self) -> int:
        return len(self.object_id)

    def batches(self, batch_size: int) -> Iterator[Partition]:
        """Consecutive slices of at most ``batch_size`` samples; views, never copies."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, self.samples, batch_size):
            yield self.slice(start, start + batch_size)

    def slice(self, start: int, stop: int) -> Partition:
        return Partition(
            images=self.images[start:stop],
            magnitudes=self.magnitudes[start:stop],
            object_id=self.object_id[start:stop],
            redshift=None if self.redshift is None else self.redshift[start:stop],
            provenance=self.provenance,
        )


def encode_tensors(
    tensors: Mapping[str, np.ndarray[Any, Any]], metadata: Mapping[str, str]
) -> bytes:
    """Serialise named arrays as safetensors; the same input always gives the same bytes.

    The header is written here rather than by ``safetensors.numpy.save`` because that one
    orders ``__metadata__`` keys differently from run to run, and "same seed, same bytes" is
    a promise of ``cosmicai data synth``. The layout is the safetensors one (the tests read
    our output back with the safetensors library): data offsets relative to the end of the
    header, the header padded with spaces to 8 bytes, larger element types first, so every
    tensor starts aligned to its element size.
    """
    arrays = {name: np.ascontiguousarray(a) for name, a in tensors.items()}
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    order = sorted(arrays, key=lambda t: (-arrays[t].dtype.itemsize, t))
    for name in order:
        array = arrays[name]
        header[name] = {
            "dtype": _dtype_name(array.dtype, name),
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    out = bytearray(8 + len(header_bytes) + offset)
    struct.pack_into("<Q", out, 0, len(header_bytes))
    out[8 : 8 + len(header_bytes)] = header_bytes
    position = 8 + len(header_bytes)
    for name in order:
        nbytes = arrays[name].nbytes
        out[position : position + nbytes] = arrays[name].reshape(-1).view(np.uint8).data
        position += nbytes
    return bytes(out)


def _dtype_name(dtype: np.dtype[Any], tensor: str) -> str:
    for name, known in _DTYPES.items():
        if dtype == known:
            return name
    raise ValueError(f"tensor {tensor}: dtype {dtype} is not one of {sorted(_DTYPES)}")


def encode_partition(partition: Partition) -> bytes:
    """Serialise a partition; the same arrays and provenance always give the same bytes."""
    tensors: dict[str, np.ndarray[Any, Any]] = {
        "images": np.asarray(partition.images, dtype="<f4"),
        "magnitudes": np.asarray(partition.magnitudes, dtype="<f4"),
        "object_id": np.asarray(partition.object_id, dtype="<i8"),
    }
    if partition.redshift is not None:
        tensors["redshift"] = np.asarray(partition.redshift, dtype="<f4")
    return encode_tensors(
        tensors,
        {
            "format": FORMAT_NAME,
            "provenance": json.dumps(dict(partition.provenance), sort_keys=True),
            "samples": str(partition.samples),
            "schema_version": str(SCHEMA_VERSION),
        },
    )


def read_header(buffer: bytes | bytearray | memoryview, name: str = "partition") -> dict[str, Any]:
    """Parse and check the safetensors header; ``name`` is used in error messages."""
    view = memoryview(buffer)
    if len(view) < 8:
        raise PartitionFormatError(
            f"{name} is truncated: {len(view)} bytes, too short for a safetensors header"
        )
    (header_len,) = struct.unpack("<Q", view[:8])
    if header_len > MAX_HEADER_BYTES:
        raise PartitionFormatError(
            f"{name} is not a cosmicai partition: header length {header_len} exceeds "
            f"{MAX_HEADER_BYTES} bytes"
        )
    if 8 + header_len > len(view):
        raise PartitionFormatError(
            f"{name} is truncated: header needs {8 + header_len} bytes, object has {len(view)}"
        )
    try:
        header = json.loads(bytes(view[8 : 8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PartitionFormatError(f"{name} is corrupt: header is not valid JSON ({exc})") from exc
    except RecursionError:
        raise PartitionFormatError(f"{name} is corrupt: header JSON is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise PartitionFormatError(f"{name} is corrupt: header JSON is unusable ({exc})") from None
    if not isinstance(header, dict):
        raise PartitionFormatError(f"{name} is corrupt: header is not a JSON object")
    return header


def decode_tensors(
    buffer: bytes | bytearray | memoryview,
    expected: Mapping[str, tuple[str, tuple[int, ...]]],
    *,
    optional: frozenset[str] = frozenset(),
    name: str = "object",
) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, str]]:
    """Numpy views of the tensors of a safetensors object, checked against ``expected``.

    ``expected`` maps tensor names to (dtype, shape after the sample axis); every tensor must
    have the same number of samples. Any inconsistency (truncation, dtype, shape, offsets
    outside the object) raises :class:`PartitionFormatError` naming ``name`` and the fault.
    """
    header = read_header(buffer, name)
    view = memoryview(buffer)
    data_start = 8 + struct.unpack("<Q", view[:8])[0]
    data_len = len(view) - data_start

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise PartitionFormatError(f"{name} is corrupt: __metadata__ is not a JSON object")
    missing = [t for t in expected if t not in header and t not in optional]
    if missing:
        raise PartitionFormatError(f"{name} lacks tensor(s): {', '.join(missing)}")

    arrays: dict[str, np.ndarray[Any, Any]] = {}
    spans: list[tuple[int, int, str]] = []
    samples: int | None = None
    for tensor, (dtype_name, tail) in expected.items():
        entry = header.get(tensor)
        if entry is None:
            continue
        if not isinstance(entry, dict) or entry.get("dtype") != dtype_name:
            got = entry.get("dtype") if isinstance(entry, dict) else entry
            raise PartitionFormatError(
                f"{name}: tensor {tensor} has dtype {got}, expected {dtype_name}"
            )
        shape = entry.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) != 1 + len(tail)
            # type() rather than isinstance(): JSON true is a bool, and bool is an int.
            or not all(type(d) is int and d >= 0 for d in shape)
            or tuple(shape[1:]) != tail
        ):
            expected_shape = ", ".join(["N", *map(str, tail)])
            raise PartitionFormatError(
                f"{name}: tensor {tensor} has shape {shape}, expected [{expected_shape}]"
            )
        if samples is None:
            samples = shape[0]
        elif shape[0] != samples:
            raise PartitionFormatError(
                f"{name}: tensor {tensor} has {shape[0]} samples, other tensors have {samples}"
            )
        dtype = _DTYPES[dtype_name]
        # math.prod on Python ints: numpy's product wraps around past 2**63, and a wrapped
        # product could match small offsets.
        count = math.prod(shape)
        if count * dtype.itemsize > data_len:
            raise PartitionFormatError(
                f"{name} is truncated (or its header is wrong): tensor {tensor} has shape "
                f"{shape} ({count * dtype.itemsize} bytes), the object {data_len} data bytes"
            )
        offsets = entry.get("data_offsets")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or offsets[0] < 0
            or offsets[1] - offsets[0] != count * dtype.itemsize
        ):
            raise PartitionFormatError(
                f"{name}: tensor {tensor} has data offsets {offsets} that do not hold "
                f"{count * dtype.itemsize} bytes"
            )
        if offsets[1] > data_len:
            raise PartitionFormatError(
                f"{name} is truncated: tensor {tensor} ends at byte {data_start + offsets[1]}, "
                f"object has {len(view)}"
            )
        for start, end, other in spans:
            if offsets[0] < end and start < offsets[1]:
                raise PartitionFormatError(
                    f"{name} is corrupt: tensors {other} and {tensor} overlap (bytes "
                    f"{max(start, offsets[0])}-{min(end, offsets[1])} of the data)"
                )
        spans.append((offsets[0], offsets[1], tensor))
        arrays[tensor] = np.frombuffer(
            view, dtype=dtype, count=count, offset=data_start + offsets[0]
        ).reshape(shape)
    return arrays, {str(k): str(v) for k, v in metadata.items()}


def decode_partition(buffer: bytes | bytearray | memoryview, name: str = "partition") -> Partition:
    """Turn one partition object into numpy views of ``buffer`` (no copy of the tensor data)."""
    arrays, metadata = decode_tensors(buffer, _EXPECTED, optional=_OPTIONAL, name=name)
    if metadata.get("format") != FORMAT_NAME:
        raise PartitionFormatError(
            f"{name} is not a cosmicai partition (metadata format={metadata.get('format')!r})"
        )
    version = metadata.get("schema_version")
    if version != str(SCHEMA_VERSION):
        raise PartitionFormatError(
            f"{name} has schema version {version!r}; this cosmicai reads version {SCHEMA_VERSION}"
        )
    samples = len(arrays["object_id"])
    declared = metadata.get("samples")
    if declared is not None and declared != str(samples):
        raise PartitionFormatError(
            f"{name}: metadata says {declared} samples, tensors hold {samples}"
        )
    try:
        provenance = json.loads(metadata.get("provenance", "{}"))
    except (RecursionError, ValueError):
        raise PartitionFormatError(f"{name}: provenance metadata is not valid JSON") from None
    if not isinstance(provenance, dict):
        raise PartitionFormatError(
            f"{name}: provenance metadata is a JSON {type(provenance).__name__}, not an object"
        )
    return Partition(
        images=arrays["images"],
        magnitudes=arrays["magnitudes"],
        object_id=arrays["object_id"],
        redshift=arrays.get("redshift"),
        provenance=provenance,
    )


def partition_number(key: str) -> int | None:
    """The number N of a partition key ``.../N.safetensors``; None for any other key."""
    base = key.rsplit("/", 1)[-1]
    if not base.endswith(PARTITION_SUFFIX):
        return None
    stem = base[: -len(PARTITION_SUFFIX)]
    if not stem.isdigit() or not stem.isascii():
        return None
    return int(stem)


def partition_key(prefix: str, number: int) -> str:
    """Key of partition ``number`` under ``prefix`` (numbering starts at 1, as CosmicAI's)."""
    if number < 1:
        raise ValueError(f"partition numbers start at 1, got {number}")
    return f"{join_key(prefix, str(number))}{PARTITION_SUFFIX}"
