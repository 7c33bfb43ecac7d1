"""The communicator's serializer: exact round trips, refusals, and hostile bytes."""

from __future__ import annotations

import enum
import subprocess
import sys
from collections import OrderedDict
from typing import Any

import msgpack  # type: ignore[import-untyped]
import numpy as np
import pytest

from cosmicai.comm.serial import (
    EXT_NDARRAY,
    EXT_NPSCALAR,
    EXT_TUPLE,
    MAX_EXT_DEPTH,
    dumps,
    loads,
)
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


def nested_tuples(depth: int) -> bytes:
    """``depth`` tuples inside one another, encoded by hand as a hostile sender would."""
    data = msgpack.packb([])
    for _ in range(depth):
        data = msgpack.packb(msgpack.ExtType(EXT_TUPLE, data))
    encoded: bytes = data
    return encoded


def test_deeply_nested_tuples_are_refused_on_both_sides_not_a_crash() -> None:
    # GIVEN tuples 200 deep, which used to overflow the receiver's C stack (SIGSEGV, the rank
    # dying without a word). WHEN they are received THEN the receiver refuses them (in a child
    # process: a regression would crash it, not this test run).
    code = (
        "import sys\n"
        "from cosmicai.comm.serial import loads\n"
        "from cosmicai.exceptions import CommProtocolError\n"
        "try:\n"
        "    loads(sys.stdin.buffer.read())\n"
        "except CommProtocolError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=nested_tuples(200),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert f"more than {MAX_EXT_DEPTH} deep" in result.stdout.decode()
    # AND the sender refuses to build them, with a ValueError naming the limit
    obj: Any = ()
    for _ in range(200):
        obj = (obj,)
    with pytest.raises(ValueError, match=f"more than {MAX_EXT_DEPTH} deep"):
        dumps(obj)
    # AND nesting within the limit still round-trips
    shallow: Any = ()
    for _ in range(MAX_EXT_DEPTH - 1):
        shallow = (shallow,)
    assert loads(dumps(shallow)) == shallow


@pytest.mark.parametrize(
    "timestamp",
    [
        msgpack.Timestamp(1, 0),  # timestamp 32
        msgpack.Timestamp(1, 5),  # timestamp 64
        msgpack.Timestamp(2**40, 5),  # timestamp 96
    ],
)
def test_msgpack_timestamps_are_refused(timestamp: msgpack.Timestamp) -> None:
    # GIVEN MessagePack's timestamp extension, alone and inside a list, a dict and a tuple
    inside_tuple = msgpack.packb(msgpack.ExtType(EXT_TUPLE, msgpack.packb([timestamp])))
    for data in (
        msgpack.packb(timestamp),
        msgpack.packb([1, [2, timestamp]]),
        msgpack.packb({"when": timestamp}),
        msgpack.packb({timestamp: 1}),
        inside_tuple,
    ):
        # WHEN it is received THEN it is refused (it decoded to msgpack.Timestamp, a type
        # outside the documented set)
        with pytest.raises(CommProtocolError, match="timestamp"):
            loads(data)
        with pytest.raises(CommProtocolError, match="timestamp"):
            loads(memoryview(data))


def test_bytes_that_look_like_a_timestamp_inside_data_are_fine() -> None:
    # The marker bytes of a timestamp inside a bytes value only cost a look at the result.
    obj = [b"\xd6\xff\xd7\xff\xc7\x0c\xff", {"k": [1.5, "\xff"]}, (b"\xd7\xff",)]
    assert loads(dumps(obj)) == obj
