"""Fault matrix, partitions and the dataset index: every fault is refused naming the object
and the fault (issue 11, item 16)."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import pytest

from cosmicai.data.format import decode_partition, encode_partition
from cosmicai.data.partitioner import DATASET_INDEX
from cosmicai.exceptions import PartitionFormatError, PlanError
from cosmicai.pipeline import list_partitions
from cosmicai.storage import Storage
from harness.data import BUCKET, make_partition

NAME = "partition cosmicai-data/25MB/7.safetensors"


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _join(header_text: str, body: bytes) -> bytes:
    raw = header_text.encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _with_header(mutate: Callable[[dict[str, Any]], None]) -> bytes:
    header, body = _split(encode_partition(make_partition(4)))
    mutate(header)
    return _join(json.dumps(header), body)


def _refused(data: bytes, *needles: str) -> str:
    with pytest.raises(PartitionFormatError) as caught:
        decode_partition(data, name=NAME)
    message = str(caught.value)
    assert NAME in message
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def test_deeply_nested_header_is_named() -> None:
    _, body = _split(encode_partition(make_partition(4)))
    data = _join('{"__metadata__": ' + "[" * 100_000 + "]" * 100_000 + "}", body)
    _refused(data, "nested too deeply")


def test_true_in_a_shape_is_named() -> None:
    def mutate(header: dict[str, Any]) -> None:
        header["object_id"]["shape"] = [True]

    _refused(_with_header(mutate), "object_id", "shape")


def test_shape_whose_product_overflows_64_bits_is_named() -> None:
    def mutate(header: dict[str, Any]) -> None:
        # 2**62 * 5 * 32 * 32 elements wraps around to 0 in int64: offsets holding 0 bytes
        # agree with the wrapped product, so only numpy's reshape used to notice
        header["images"]["shape"] = [2**62, 5, 32, 32]
        header["images"]["data_offsets"] = [0, 0]

    _refused(_with_header(mutate), "images")


def test_provenance_that_is_a_json_list_is_named() -> None:
    def mutate(header: dict[str, Any]) -> None:
        header["__metadata__"]["provenance"] = "[1, 2]"

    _refused(_with_header(mutate), "provenance", "list")


def test_overlapping_tensors_are_named() -> None:
    def mutate(header: dict[str, Any]) -> None:
        # redshift (4 samples x 4 bytes) laid over the first half of object_id's bytes
        start = header["object_id"]["data_offsets"][0]
        header["redshift"]["data_offsets"] = [start, start + 16]

    _refused(_with_header(mutate), "overlap", "object_id", "redshift")


def _index(storage: Storage, entries: Any) -> None:
    storage.put(BUCKET, f"data/{DATASET_INDEX}", json.dumps({"partitions": entries}).encode())


def test_negative_sample_count_in_the_index_is_named(local_storage: Storage) -> None:
    # GIVEN a partition and an index that gives it -5 samples (with the right size)
    data = encode_partition(make_partition(4))
    local_storage.put(BUCKET, "data/1.safetensors", data)
    _index(local_storage, [{"number": 1, "samples": -5, "bytes": len(data)}])
    # WHEN planned / THEN the index is refused, naming the object and the field
    with pytest.raises(PlanError, match=r"data/_index.json.*partitions\[0\].*samples"):
        list_partitions(local_storage, BUCKET, "data/")


def test_deeply_nested_index_is_named(local_storage: Storage) -> None:
    local_storage.put(BUCKET, "data/1.safetensors", encode_partition(make_partition(4)))
    local_storage.put(BUCKET, f"data/{DATASET_INDEX}", b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(PlanError, match=r"data/_index.json is nested too deeply"):
        list_partitions(local_storage, BUCKET, "data/")
