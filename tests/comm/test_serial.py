"""The communicator's serializer: exact round trips, refusals, and hostile bytes."""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Any

import msgpack  # type: ignore[import-untyped]
import numpy as np
import pytest

from cosmicai.comm.serial import EXT_NDARRAY, EXT_NPSCALAR, dumps, loads
from cosmicai.exceptions import CommProtocolError


class Colour(enum.IntEnum):
    RED = 1


PLAIN = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**64,
    -(2**64) - 5,
    10**40,
    1.5,
    float("inf"),
    -0.0,
    "",
    "galaxy é 銀河",
    b"",
    b"\x00\xff",
    [],
    (),
    [1, (2, 3), [4, (5,)]],
    ((1,), ()),
    {"a": 1, 2: "b", (3, 4): [5], b"k": None, None: 1.0, True: False},
]


@pytest.mark.parametrize("obj", PLAIN, ids=repr)
def test_plain_objects_come_back_equal_and_of_the_same_type(obj: Any) -> None:
    back = loads(dumps(obj))
    assert back == obj
    assert type(back) is type(obj)


def test_nested_types_are_kept_exactly() -> None:
    obj = {"t": (1, [2, (3, {"x": (4.5,)})])}
    back = loads(dumps(obj))
    assert type(back["t"]) is tuple
    assert type(back["t"][1]) is list
    assert type(back["t"][1][1]) is tuple
    assert type(back["t"][1][1][1]["x"]) is tuple
    assert list(loads(dumps({"b": 1, "a": 2}))) == ["b", "a"]  # insertion order


ARRAYS = [
    np.arange(12, dtype=np.float64).reshape(3, 4),
    np.arange(5, dtype=">i4"),
    np.array(3.5, dtype=np.float32),
    np.zeros((0, 3), dtype=np.int8),
    np.array([True, False]),
    np.array([1 + 2j], dtype=np.complex128),
    np.array(["ab", "c"]),
    np.array([b"ab"]),
    np.array(["2024-01-01"], dtype="datetime64[ns]"),
    np.array([5], dtype="timedelta64[s]"),
    np.asfortranarray(np.arange(6, dtype=np.uint16).reshape(2, 3)),
    np.arange(10)[::3],
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_numpy_arrays_round_trip_with_dtype_and_shape(array: np.ndarray) -> None:
    back = loads(dumps(array))
    assert type(back) is np.ndarray
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


@pytest.mark.parametrize(
    "scalar",
    [np.float64(1.25), np.float32(-2.5), np.int8(-3), np.uint64(2**64 - 1), np.bool_(True)],
    ids=repr,
)
def test_numpy_scalars_stay_numpy_scalars(scalar: np.generic) -> None:
    back = loads(dumps(scalar))
    assert type(back) is type(scalar)
    assert back == scalar


@pytest.mark.parametrize(
    "obj",
    [
        {1, 2},
        frozenset(),
        object(),
        1 + 2j,
        OrderedDict(a=1),
        Colour.RED,
        np.array([None, 1], dtype=object),
        np.zeros(2, dtype=[("x", "f8"), ("y", "i4")]),
        [1, {"nested": {2}}],
    ],
    ids=lambda o: type(o).__name__,
)
def test_unsupported_types_are_refused_naming_the_type(obj: object) -> None:
    with pytest.raises(TypeError) as caught:
        dumps(obj)
    message = str(caught.value)
    inner = obj[1]["nested"] if isinstance(obj, list) else obj
    assert type(inner).__qualname__ in message or "dtype" in message


def test_byte_buffers_arrive_as_bytes() -> None:
    # Documented: MessagePack packs every byte buffer as bin.
    assert loads(dumps(bytearray(b"ab"))) == b"ab"


def packed_ext(code: int, fields: list[Any]) -> bytes:
    data: bytes = msgpack.packb(msgpack.ExtType(code, msgpack.packb(fields)))
    return data


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (packed_ext(EXT_NDARRAY, ["|O8", [1], b"\x00" * 8]), "dtype"),
        (packed_ext(EXT_NDARRAY, ["|V8", [1], b"\x00" * 8]), "dtype"),
        (packed_ext(EXT_NDARRAY, ["<f8", [2], b"\x00" * 8]), "needs 16 bytes"),
        (packed_ext(EXT_NDARRAY, ["<f8", [-1], b""]), "header"),
        (packed_ext(EXT_NDARRAY, ["<f8", [1]]), "malformed"),
        (packed_ext(EXT_NDARRAY, ["(2,)f8", [1], b"\x00" * 16]), "dtype"),
        (packed_ext(EXT_NPSCALAR, ["<f8", b"\x00"]), "byte count"),
        (msgpack.packb(msgpack.ExtType(99, b"")), "unknown extension"),
        (b"\xc1", "not a valid message"),
        (dumps([1, 2, 3])[:-1], "not a valid message"),
        (dumps(1) + b"\x00", "not a valid message"),
        (b"\x81\x91\x01\x02", "not a valid message"),  # a map keyed by a list
        (b"\xa2\xff\xfe", "not a valid message"),  # invalid UTF-8
        (b"\x91" * 100_000 + b"\x00", "not a valid message"),  # nesting bomb
    ],
)
def test_malformed_messages_raise_a_protocol_error(data: bytes, fault: str) -> None:
    with pytest.raises(CommProtocolError, match=fault):
        loads(data)


def test_no_pickle_anywhere_in_the_package() -> None:
    from pathlib import Path

    import cosmicai.comm

    for path in Path(cosmicai.comm.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "pickle.loads" not in text, path
