from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load as safetensors_load

from cosmicai.data.format import (
    BYTES_PER_SAMPLE,
    Partition,
    decode_partition,
    encode_partition,
    partition_key,
    partition_number,
)
from cosmicai.exceptions import PartitionFormatError
from harness.data import make_partition


def test_round_trip_is_exact_and_readable_by_safetensors() -> None:
    # GIVEN a partition
    partition = make_partition(7, first_id=100)
    # WHEN it is encoded and decoded
    data = encode_partition(partition)
    decoded = decode_partition(data)
    # THEN every array comes back bit for bit, and the safetensors library agrees
    for name in ("images", "magnitudes", "object_id", "redshift"):
        assert np.array_equal(getattr(decoded, name), getattr(partition, name))
    reference = safetensors_load(data)
    assert np.array_equal(reference["images"], partition.images)
    assert decoded.provenance == {"source": "test", "seed": 0}
    # and the size is the documented bytes per sample plus a small header
    assert 0 < len(data) - 7 * BYTES_PER_SAMPLE < 1024


def test_encoding_is_deterministic() -> None:
    # The safetensors writer orders metadata differently between calls; ours must not.
    a = encode_partition(make_partition(5, seed=3))
    b = encode_partition(make_partition(5, seed=3))
    assert a == b


def test_decode_returns_views_not_copies() -> None:
    # GIVEN an encoded partition in one buffer
    data = bytearray(encode_partition(make_partition(4)))
    # WHEN decoded
    decoded = decode_partition(data)
    # THEN the arrays share the buffer (no second copy of a 100 MB partition)
    assert not decoded.images.flags["OWNDATA"]
    assert np.shares_memory(decoded.images, np.frombuffer(data, dtype=np.uint8))


def test_batches_are_views_covering_every_sample() -> None:
    partition = decode_partition(encode_partition(make_partition(10)))
    batches = list(partition.batches(4))
    assert [b.samples for b in batches] == [4, 4, 2]
    assert np.array_equal(np.concatenate([b.object_id for b in batches]), partition.object_id)
    assert all(np.shares_memory(b.images, partition.images) for b in batches)


def test_redshift_is_optional() -> None:
    p = make_partition(3)
    unlabelled = Partition(images=p.images, magnitudes=p.magnitudes, object_id=p.object_id)
    assert decode_partition(encode_partition(unlabelled)).redshift is None


@pytest.mark.parametrize("cut", [0, 7, 40, -1, -20480])
def test_truncated_partition_is_named(cut: int) -> None:
    data = encode_partition(make_partition(3))
    with pytest.raises(PartitionFormatError, match=r"partition 5\.safetensors is truncated"):
        decode_partition(data[:cut], name="partition 5.safetensors")


def _rewrite_header(data: bytes, change: dict[str, object]) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    for key, value in change.items():
        tensor, _, field = key.partition(".")
        if field:
            header[tensor][field] = value
        else:
            header[tensor] = value
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + length :]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images.dtype": "F64"}, "tensor images has dtype F64, expected F32"),
        ({"images.shape": [3, 3, 32, 32]}, r"tensor images has shape \[3, 3, 32, 32\]"),
        ({"magnitudes.shape": [2, 5]}, "has 2 samples, other tensors have 3"),
        ({"object_id.data_offsets": [0, 8]}, "data offsets"),
        ({"__metadata__.format": "other"}, "not a cosmicai partition"),
        ({"__metadata__.schema_version": "9"}, "schema version '9'"),
        ({"__metadata__.samples": "4"}, "metadata says 4 samples, tensors hold 3"),
    ],
)
def test_inconsistent_header_is_explained(change: dict[str, object], message: str) -> None:
    data = _rewrite_header(encode_partition(make_partition(3)), change)
    with pytest.raises(PartitionFormatError, match=message):
        decode_partition(data)


def test_garbage_is_refused_without_parsing_a_huge_header() -> None:
    with pytest.raises(PartitionFormatError, match="header length"):
        decode_partition(b"\xff" * 64)
    with pytest.raises(PartitionFormatError, match="not valid JSON"):
        decode_partition(struct.pack("<Q", 4) + b"{{{{" + b"\0" * 16)


def test_partition_names() -> None:
    assert partition_key("25MB/", 12) == "25MB/12.safetensors"
    assert partition_key("", 1) == "1.safetensors"
    assert partition_number("25MB/12.safetensors") == 12
    assert partition_number("25MB/12.pt") is None
    assert partition_number("25MB/x12.safetensors") is None
    assert partition_number("25MB/_index.json") is None
    with pytest.raises(ValueError, match="start at 1"):
        partition_key("p", 0)
