"""Frames: the unit every channel moves, and the one piece that reassembles them from bytes.

A frame is a 16-byte header and a payload (byte by byte in ``docs/communicator.md``)::

    offset  size  field
    0       2     magic b"CF"  (a stream that lost its place fails here, not later)
    2       1     version, 1
    3       1     kind: OBJECT 1, BUFFER 2, CONTROL 3, CLOSE 4
    4       4     tag, signed big-endian (user tags >= 0, the communicator's own < 0)
    8       8     payload length, unsigned big-endian

The same bytes go over a TCP link and, one frame per object, into the object store, so both
channels share every rule here. :class:`FrameAssembler` is sans-IO: it is fed bytes and
returns complete frames, and it can hand out the unfilled rest of a large payload so the
caller reads from the socket straight into it (``recv_into``), possibly into a buffer the
caller chose beforehand (a *claim*), which is how a numpy ``Recv`` lands without a copy.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from enum import IntEnum

from cosmicai.comm.settings import CommSettings
from cosmicai.exceptions import CommProtocolError

MAGIC = b"CF"
VERSION = 1
HEADER = struct.Struct("!2sBBiQ")
HEADER_SIZE = HEADER.size  # 16
MIN_TAG = -(2**31)
MAX_TAG = 2**31 - 1


def max_frame_bytes(explicit: int | None = None) -> int:
    """The largest payload accepted: argument > COSMICAI_COMM_MAX_FRAME_BYTES > default."""
    return CommSettings.from_env(max_frame_bytes=explicit).max_frame_bytes


class FrameKind(IntEnum):
    #: A serialized Python object (``cosmicai.comm.serial``).
    OBJECT = 1
    #: The raw bytes of a numpy buffer (Send, Bcast, ...): no serialization, no copy.
    BUFFER = 2
    #: Link management (the fallback decision); never seen by communicator users.
    CONTROL = 3
    #: The peer closes its end on purpose; the payload is its UTF-8 reason.
    CLOSE = 4


_KIND_BY_VALUE = {int(kind): kind for kind in FrameKind}

#: An unclaimed payload at least this large is received into an anonymous memory mapping:
#: the kernel gives it memory page by page as bytes are written, so a header announcing a
#: huge length costs nothing until the bytes really arrive (a bytearray is zeroed, all of it,
#: at once). Smaller payloads use a bytearray, which is cheaper to make.
MAPPED_PAYLOAD_MIN = 2**20

#: Decides where a payload lands: called with (kind, tag, length) when a header is complete;
#: returns a writable byte view of exactly ``length`` bytes, or None for a fresh bytearray.
Claim = Callable[[FrameKind, int, int], memoryview | None]


class Frame:
    """One received (or self-addressed) frame."""

    # A plain slotted class: frames are made per message on the hot path, where a frozen
    # dataclass's __init__ costs several times more.
    __slots__ = ("claimed", "kind", "payload", "tag")

    def __init__(
        self,
        kind: FrameKind,
        tag: int,
        payload: bytes | bytearray | memoryview,
        claimed: bool = False,
    ) -> None:
        self.kind = kind
        self.tag = tag
        self.payload = payload
        #: True when the payload was written into a buffer handed out by a claim.
        self.claimed = claimed

    def __repr__(self) -> str:
        return f"Frame({self.kind.name}, tag={self.tag}, {len(self.payload)} bytes)"


def encode_header(kind: FrameKind, tag: int, length: int) -> bytes:
    if not MIN_TAG <= tag <= MAX_TAG:
        raise ValueError(f"tag {tag} does not fit in a signed 32-bit integer")
    return HEADER.pack(MAGIC, VERSION, kind, tag, length)


def encode_frame(kind: FrameKind, tag: int, payload: bytes | bytearray | memoryview) -> bytes:
    """One frame as a single bytes object (the object-store channel's unit)."""
    body = memoryview(payload).cast("B")
    return encode_header(kind, tag, body.nbytes) + body


def parse_header(
    buffer: bytes | bytearray | memoryview, max_payload: int, offset: int = 0
) -> tuple[FrameKind, int, int]:
    """(kind, tag, length) of the header at ``offset``, refusing anything out of protocol."""
    magic, version, kind_value, tag, length = HEADER.unpack_from(buffer, offset)
    if magic != MAGIC:
        raise CommProtocolError(f"bytes out of step: expected frame magic {MAGIC!r}, got {magic!r}")
    if version != VERSION:
        raise CommProtocolError(f"frame version {version} is not supported (expected {VERSION})")
    kind = _KIND_BY_VALUE.get(kind_value)
    if kind is None:
        raise CommProtocolError(f"frame kind {kind_value} is unknown")
    if length > max_payload:
        raise CommProtocolError(f"frame of {length} bytes exceeds the limit of {max_payload} bytes")
    return kind, tag, length


def decode_frame(data: bytes | bytearray, max_payload: int) -> Frame:
    """The frame that is the whole of ``data`` (one object-store object)."""
    if len(data) < HEADER_SIZE:
        raise CommProtocolError(f"object of {len(data)} bytes is shorter than a frame header")
    kind, tag, length = parse_header(data, max_payload)
    if length != len(data) - HEADER_SIZE:
        raise CommProtocolError(
            f"frame announces {length} payload bytes, the object holds {len(data) - HEADER_SIZE}"
        )
    return Frame(kind, tag, memoryview(data)[HEADER_SIZE:])


class FrameAssembler:
    """Turns a byte stream into frames, holding at most one partial frame.

    ``feed`` takes any slicing of the stream (a frame split at every byte works). A length
    above ``max_payload`` is refused as soon as the header is complete, before anything is
    allocated for it; below it, a large payload's memory is taken as its bytes arrive
    (``MAPPED_PAYLOAD_MIN``), so a peer must send what it announces before the receiver holds
    it. While a payload is incomplete, ``window`` is its unfilled rest and ``advance`` records
    bytes written there, so large payloads skip the intermediate buffer.
    """

    __slots__ = (
        "_claimed",
        "_fill",
        "_header",
        "_header_fill",
        "_kind",
        "_length",
        "_payload",
        "_tag",
        "_target",
        "claim",
        "max_payload",
    )

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        #: Consulted for every new payload; see :data:`Claim`.
        self.claim: Claim | None = None
        self._header = bytearray(HEADER_SIZE)
        self._header_fill = 0
        self._payload: memoryview | None = None
        self._target: bytearray | memoryview = bytearray()
        self._fill = 0
        self._length = 0
        self._kind = FrameKind.OBJECT
        self._tag = 0
        self._claimed = False

    @property
    def at_boundary(self) -> bool:
        """True when no partial frame is held (the stream may stop here cleanly)."""
        return self._payload is None and self._header_fill == 0

    @property
    def filling_claim(self) -> bool:
        """True while a payload is being written into a claimed (caller's) buffer."""
        return self._payload is not None and self._claimed

    def window(self) -> memoryview | None:
        """The unfilled part of the payload being received, if one is."""
        if self._payload is None:
            return None
        return self._payload[self._fill :]

    def advance(self, count: int) -> list[Frame]:
        """Record ``count`` bytes written into :meth:`window`."""
        self._fill += count
        if self._fill == self._length:
            return [self._finish()]
        return []

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add received bytes; return every frame they complete, in order."""
        view = memoryview(data).cast("B")
        frames: list[Frame] = []
        position = 0
        end = len(view)
        while position < end:
            payload = self._payload
            if payload is not None:
                take = min(self._length - self._fill, end - position)
                payload[self._fill : self._fill + take] = view[position : position + take]
                self._fill += take
                position += take
                if self._fill == self._length:
                    frames.append(self._finish())
            elif self._header_fill == 0 and end - position >= HEADER_SIZE:
                # The common case: a whole header in hand, parsed in place.
                kind, tag, length = parse_header(view, self.max_payload, position)
                position += HEADER_SIZE
                if length <= end - position and self.claim is None:
                    frames.append(Frame(kind, tag, bytes(view[position : position + length])))
                    position += length
                else:
                    frame = self._start(kind, tag, length)
                    if frame is not None:
                        frames.append(frame)
            else:
                take = min(HEADER_SIZE - self._header_fill, end - position)
                self._header[self._header_fill : self._header_fill + take] = view[
                    position : position + take
                ]
                self._header_fill += take
                position += take
                if self._header_fill == HEADER_SIZE:
                    self._header_fill = 0
                    frame = self._start(*parse_header(self._header, self.max_payload))
                    if frame is not None:
                        frames.append(frame)
        return frames

    def _start(self, kind: FrameKind, tag: int, length: int) -> Frame | None:
        if length == 0:
            return Frame(kind, tag, b"")
        target = self.claim(kind, tag, length) if self.claim is not None else None
        if target is not None:
            if target.nbytes != length or target.readonly:
                raise ValueError("a claim must return a writable view of exactly the length")
            self.claim = None  # one claim, one frame
            self._claimed = True
            self._target = target
        else:
            self._claimed = False
            self._target = (
                memoryview(mmap.mmap(-1, length))
                if length >= MAPPED_PAYLOAD_MIN
                else bytearray(length)
            )
        self._payload = memoryview(self._target).cast("B")
        self._kind, self._tag, self._length, self._fill = kind, tag, length, 0
        return None

    def _finish(self) -> Frame:
        frame = Frame(self._kind, self._tag, self._target, self._claimed)
        self._payload = None
        self._target = bytearray()
        return frame
