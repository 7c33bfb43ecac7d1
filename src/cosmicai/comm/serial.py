"""Safe serialization of the Python objects the communicator moves: MessagePack plus four
extension types, and nothing that can run code when decoded (no pickle).

Supported, and returned with exactly the same type: None, bool, int (any size), float, str,
bytes, list, tuple, dict (keys of any supported hashable type, insertion order kept), numpy
arrays of plain dtypes (bool, integers, floats, complex, datetime/timedelta, fixed-width
bytes and str) and numpy scalars of the same dtypes. Anything else, subclasses included (an
``IntEnum``, an ``OrderedDict``, a ``bytearray``), is refused with a TypeError naming the type:
an exact round trip is the promise, so a type that would come back as another is refused.

Extension types (MessagePack ``ext``; codes are part of the wire format, see
``docs/communicator.md``):

- ``1`` tuple: the payload is the MessagePack array of its items;
- ``2`` numpy array: ``[dtype.str, shape, raw C-order bytes]``;
- ``3`` numpy scalar: ``[dtype.str, raw bytes]``;
- ``4`` int outside MessagePack's 64-bit range: big-endian two's-complement bytes.

Decoding checks everything a peer controls: dtype strings against a whitelist pattern (never
``object``, never structured), shapes against the byte count, MessagePack's timestamp
extension (refused: it would decode to a type outside the set above). Nesting is bounded on
both sides: extension values (tuples, numpy arrays and scalars) at most ``MAX_EXT_DEPTH``
deep, because each level costs the decoder a C stack frame of about 45 KB (200 levels
overflowed an 8 MB stack); lists and dicts within MessagePack's own limits (511 levels to
send, 1,024 to receive). A malformed message raises :class:`CommProtocolError`; an object
nested too deep to send, a ValueError.
"""

from __future__ import annotations

import mmap
import re
from functools import partial
from typing import Any

import msgpack  # type: ignore[import-untyped]
import numpy as np

from cosmicai.exceptions import CommProtocolError

EXT_TUPLE = 1
EXT_NDARRAY = 2
EXT_NPSCALAR = 3
EXT_BIGINT = 4

# dtype.str of the plain kinds: byte order, kind, item size, and a unit for datetimes.
# Object ('O') and void/structured ('V') dtypes are absent on purpose: the first would need
# pickle and the second can hide objects inside fields.
_DTYPE_PATTERN = re.compile(r"[<>|=]?[biufcSUmM]\d{1,4}(\[\d*[a-zA-Z]{1,2}\])?")
_MAX_NDIM = 64
#: Extension values (tuples, numpy arrays and scalars) nested inside one another, at most.
MAX_EXT_DEPTH = 32
# MessagePack's timestamp extension (type -1) is decoded to msgpack.Timestamp without asking
# the ext hook, so a decoded message is searched for one (when it may hold one).
# MessagePack's default 256 KiB start buffer, allocated and freed per message, makes the
# allocator return memory to the OS and take it back each time (tens of microseconds). The
# buffer grows as needed, so a small start costs large messages nothing measurable.
_PACK_BUFFER = 4096

_SUPPORTED = "None, bool, int, float, str, bytes, list, tuple, dict, numpy arrays and numpy scalars"


def _refuse(obj: object) -> TypeError:
    kind = type(obj)
    return TypeError(
        f"cannot send an object of type {kind.__module__}.{kind.__qualname__}: "
        f"the communicator moves only {_SUPPORTED}"
    )


def _check_dtype(dtype: np.dtype[Any], where: str) -> None:
    if dtype.kind in "OV" or dtype.fields is not None or dtype.subdtype is not None:
        raise TypeError(
            f"cannot send a numpy {where} of dtype {dtype}: only plain numeric, bool, "
            "datetime and fixed-width string dtypes travel (object and structured ones would "
            "need pickle)"
        )


class NestingTooDeepError(ValueError):
    """Raised at the deepest level and passed up through every enclosing one unchanged."""


def _default(depth: int, obj: object) -> msgpack.ExtType:
    # strict_types=True sends every non-exact type here (tuple, numpy types, subclasses), so
    # a subclass is refused instead of being silently narrowed to its base type.
    kind = type(obj)
    if depth >= MAX_EXT_DEPTH and (
        kind is tuple or kind is np.ndarray or isinstance(obj, np.generic)
    ):
        raise NestingTooDeepError(
            f"cannot serialize the object: tuples and numpy values nest more than "
            f"{MAX_EXT_DEPTH} deep (a receiver could not decode it safely)"
        )
    if kind is tuple:
        return msgpack.ExtType(EXT_TUPLE, _pack(list(obj), depth + 1))  # type: ignore[call-overload]
    if kind is int:
        # Only ints beyond MessagePack's 64-bit range arrive here.
        value: int = obj  # type: ignore[assignment]
        length = (value.bit_length() + 8) // 8
        return msgpack.ExtType(EXT_BIGINT, value.to_bytes(length, "big", signed=True))
    if isinstance(obj, np.ndarray) and kind is np.ndarray:
        _check_dtype(obj.dtype, "array")
        # Not ascontiguousarray: it turns a 0-d array into a 1-d one.
        array = obj if obj.flags.c_contiguous else obj.copy(order="C")
        return msgpack.ExtType(
            EXT_NDARRAY, _pack([array.dtype.str, list(array.shape), array.tobytes()], depth + 1)
        )
    if isinstance(obj, np.generic):
        _check_dtype(obj.dtype, "scalar")
        return msgpack.ExtType(EXT_NPSCALAR, _pack([obj.dtype.str, obj.tobytes()], depth + 1))
    raise _refuse(obj)


def _pack(obj: object, depth: int = 0) -> bytes:
    try:
        data: bytes = msgpack.packb(
            obj,
            default=_DEFAULTS[depth],
            strict_types=True,
            use_bin_type=True,
            buf_size=_PACK_BUFFER,
        )
    except NestingTooDeepError:
        raise
    except ValueError as exc:
        # MessagePack's C packer stops at 511 levels of nesting.
        raise ValueError(f"cannot serialize the object: {exc}") from exc
    return data


def dumps(obj: object) -> bytes:
    """The bytes of ``obj``; raises TypeError naming the first unsupported type found."""
    return _pack(obj)


def _parse_dtype(text: object) -> np.dtype[Any]:
    if not isinstance(text, str) or not _DTYPE_PATTERN.fullmatch(text):
        raise CommProtocolError(f"message names an unsupported numpy dtype {text!r}")
    try:
        dtype = np.dtype(text)
    except TypeError as exc:
        raise CommProtocolError(f"message names an invalid numpy dtype {text!r}") from exc
    if dtype.kind in "OV":
        raise CommProtocolError(f"message names a refused numpy dtype {text!r}")
    return dtype


def _unpack_fields(data: bytes, count: int, what: str, depth: int) -> list[Any]:
    # No timestamp search (the array's raw bytes would make it costly): every field is checked
    # for its exact type below, which a timestamp fails.
    fields = _unpack(data, depth, check_timestamps=False)
    if not isinstance(fields, list) or len(fields) != count:
        raise CommProtocolError(f"malformed {what} in message")
    return fields


def _ext_hook(depth: int, code: int, data: bytes) -> object:
    if depth >= MAX_EXT_DEPTH:
        raise CommProtocolError(
            f"message nests tuples or numpy values more than {MAX_EXT_DEPTH} deep"
        )
    depth += 1
    if code == EXT_TUPLE:
        items = _unpack(data, depth)
        if not isinstance(items, list):
            raise CommProtocolError("malformed tuple in message")
        return tuple(items)
    if code == EXT_NDARRAY:
        dtype_text, shape, raw = _unpack_fields(data, 3, "numpy array", depth)
        dtype = _parse_dtype(dtype_text)
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_NDIM
            or not all(type(n) is int and n >= 0 for n in shape)
            or not isinstance(raw, bytes)
        ):
            raise CommProtocolError("malformed numpy array header in message")
        count = 1
        for n in shape:
            count *= n
        if count * dtype.itemsize != len(raw):
            raise CommProtocolError(
                f"numpy array of shape {tuple(shape)} and dtype {dtype} needs "
                f"{count * dtype.itemsize} bytes, the message holds {len(raw)}"
            )
        # A copy, so the receiver gets an ordinary writable array as with any other transport.
        return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape)).copy()
    if code == EXT_NPSCALAR:
        dtype_text, raw = _unpack_fields(data, 2, "numpy scalar", depth)
        dtype = _parse_dtype(dtype_text)
        if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
            raise CommProtocolError(f"numpy scalar of dtype {dtype} has the wrong byte count")
        return np.frombuffer(raw, dtype=dtype)[0]
    if code == EXT_BIGINT:
        if not data:
            raise CommProtocolError("empty big integer in message")
        return int.from_bytes(data, "big", signed=True)
    raise CommProtocolError(f"message holds an unknown extension type {code}")


def _unpack(
    data: bytes | bytearray | memoryview, depth: int = 0, *, check_timestamps: bool = True
) -> Any:
    try:
        result = msgpack.unpackb(
            data,
            ext_hook=_EXT_HOOKS[depth],
            raw=False,
            strict_map_key=False,
            use_list=True,
        )
    except CommProtocolError:
        raise
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        # msgpack's FormatError, StackError and ExtraData are ValueErrors; an unhashable map
        # key (a list or an array) is a TypeError.
        raise CommProtocolError(f"not a valid message: {type(exc).__name__}: {exc}") from exc
    if check_timestamps and (b"\xff" in data if type(data) is bytes else _may_hold_timestamp(data)):
        _refuse_timestamps(result)
    return result


def _may_hold_timestamp(data: bytes | bytearray | memoryview) -> bool:
    """False when ``data`` cannot hold a timestamp: it has no 0xFF byte (the type byte of the
    timestamp extension). A single memchr, so it runs for every message; when it finds one
    (often: raw array bytes, floats), the result is searched instead, which costs little
    unless the message holds long lists (send numpy arrays rather than lists of numbers)."""
    kind = type(data)
    if kind is bytes or kind is bytearray:
        return b"\xff" in data
    whole = data.obj if kind is memoryview else None  # type: ignore[union-attr]
    if isinstance(whole, bytes | bytearray | mmap.mmap):
        # The view's whole buffer (a frame's payload is a view of it): more than the message,
        # so at worst a false alarm.
        return whole.find(b"\xff") >= 0
    return b"\xff" in bytes(data)


def _refuse_timestamps(result: object) -> None:
    """Raise if ``result`` holds a msgpack.Timestamp. Tuples are not entered: each was decoded
    by its own ``_unpack``, which checked its items."""
    pending = [result]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is list:
            items: Any = item
        elif kind is dict:
            mapping: dict[Any, Any] = item  # type: ignore[assignment]
            items = [*mapping.keys(), *mapping.values()]
        elif kind is msgpack.Timestamp:
            items = [item]
        else:
            continue
        kinds = set(map(type, items))
        if msgpack.Timestamp in kinds:
            raise CommProtocolError(
                "message holds a MessagePack timestamp, which is not one of the types the "
                "communicator moves"
            )
        if list in kinds or dict in kinds:
            pending.extend(x for x in items if type(x) is list or type(x) is dict)


# One hook per depth, made once: the encoder and decoder call them for every extension value.
_DEFAULTS = [partial(_default, depth) for depth in range(MAX_EXT_DEPTH + 1)]
_EXT_HOOKS = [partial(_ext_hook, depth) for depth in range(MAX_EXT_DEPTH + 1)]


def loads(data: bytes | bytearray | memoryview) -> Any:
    """The object ``data`` encodes; raises CommProtocolError if it is malformed."""
    return _unpack(data)
