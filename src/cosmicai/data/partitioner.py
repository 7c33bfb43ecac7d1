"""Cutting a dataset into numbered partitions of a target size, and the dataset index.

Partitions are numbered 1, 2, 3, ... in the order of their samples, as CosmicAI's were. Sizes
use binary units (1 MB = 2**20 bytes): that is how CosmicAI's 25 MB partitions come to hold
1,278 samples of 20,512 bytes each.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from cosmicai.data.format import (
    BYTES_PER_SAMPLE,
    Partition,
    decode_partition,
    encode_partition,
    partition_key,
    partition_number,
)
from cosmicai.exceptions import PlanError
from cosmicai.storage import Location, ObjectInfo, Storage

DATASET_INDEX = "_index.json"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``25MB`` → 26,214,400 bytes (binary units); a bare number is bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 25MB, 1GB, 512KB)")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * 1024 ** "_KMGT".index(unit or "_"))


def samples_per_partition(size_bytes: int) -> int:
    count = size_bytes // BYTES_PER_SAMPLE
    if count < 1:
        raise ValueError(
            f"a partition of {size_bytes} bytes cannot hold one sample ({BYTES_PER_SAMPLE} bytes)"
        )
    return count


@dataclass(frozen=True)
class WrittenPartition:
    number: int
    key: str
    samples: int
    bytes: int


def write_dataset_index(out: Location, written: Iterable[WrittenPartition], **info: object) -> None:
    """``_index.json`` beside the partitions: sample counts let a plan report samples without
    reading every partition."""
    entries = sorted(written, key=lambda w: w.number)
    index = {
        "format": "cosmicai.dataset-index",
        "version": 1,
        "samples": sum(w.samples for w in entries),
        "bytes": sum(w.bytes for w in entries),
        "partitions": [
            {"number": w.number, "key": w.key, "samples": w.samples, "bytes": w.bytes}
            for w in entries
        ],
        **info,
    }
    out.storage.put(
        out.bucket, out.key(DATASET_INDEX), json.dumps(index, indent=1, sort_keys=True).encode()
    )


def list_numbered(storage: Storage, bucket: str, prefix: str) -> list[tuple[int, ObjectInfo]]:
    """Partitions ``N.safetensors`` directly under ``prefix``, in numeric order of N (not the
    store's lexicographic order, where 10 comes before 2)."""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    numbered = []
    for info in storage.list(bucket, prefix):
        rest = info.key[len(prefix) :]
        number = partition_number(rest)
        if number is not None and "/" not in rest:
            numbered.append((number, info))
    numbered.sort(key=lambda item: item[0])
    return numbered


def read_partitions(source: Location) -> Iterator[Partition]:
    """Every partition under ``source``, in numeric order of their numbers."""
    numbered = list_numbered(source.storage, source.bucket, source.prefix)
    if not numbered:
        raise PlanError(f"no partitions (N.safetensors) in {source}")
    for _, info in numbered:
        raw = source.storage.get(source.bucket, info.key)
        yield decode_partition(raw, name=f"{source.bucket}/{info.key}")


def _concat(parts: list[Partition]) -> Partition:
    has_z = all(p.redshift is not None for p in parts)
    return Partition(
        images=np.concatenate([p.images for p in parts]),
        magnitudes=np.concatenate([p.magnitudes for p in parts]),
        object_id=np.concatenate([p.object_id for p in parts]),
        redshift=np.concatenate([p.redshift for p in parts if p.redshift is not None])
        if has_z
        else None,
        provenance=parts[0].provenance,
    )


def repartition(
    partitions: Iterable[Partition],
    out: Location,
    size_bytes: int,
    *,
    provenance: dict[str, object] | None = None,
    on_written: Callable[[WrittenPartition], None] | None = None,
) -> list[WrittenPartition]:
    """Write the samples of ``partitions`` as partitions 1, 2, ... of at most ``size_bytes``.

    Holds at most one output partition plus one input partition in memory.
    """
    per_partition = samples_per_partition(size_bytes)
    written: list[WrittenPartition] = []
    pending: list[Partition] = []
    pending_count = 0

    def flush(parts: list[Partition]) -> None:
        merged = _concat(parts)
        number = len(written) + 1
        merged = Partition(
            images=merged.images,
            magnitudes=merged.magnitudes,
            object_id=merged.object_id,
            redshift=merged.redshift,
            provenance={**dict(merged.provenance), **(provenance or {}), "partition": number},
        )
        data = encode_partition(merged)
        key = partition_key(out.prefix, number)
        out.storage.put(out.bucket, key, data)
        entry = WrittenPartition(number, key, merged.samples, len(data))
        written.append(entry)
        if on_written:
            on_written(entry)

    for partition in partitions:
        start = 0
        while start < partition.samples:
            take = min(per_partition - pending_count, partition.samples - start)
            pending.append(partition.slice(start, start + take))
            pending_count += take
            start += take
            if pending_count == per_partition:
                flush(pending)
                pending, pending_count = [], 0
    if pending:
        flush(pending)
    write_dataset_index(out, written, samples_per_partition=per_partition)
    return written
