"""The native protocol's outer layer: the connection preamble and length-prefixed frames.

Specified byte by byte in ``docs/rendezvous-protocol.md``. A native client opens with
``PREAMBLE`` (magic, then the protocol version); the server answers with its own. Every message
after that is a frame: a 4-byte big-endian length counting the type byte and the payload, the
type byte, the payload.

The magic starts with a zero byte, which is what tells the two protocols on one port apart: a
TCPunch client's first byte is the first byte of its pairing name, a C string, which is never
zero (the reference server would read such a name as the empty string).
"""

from __future__ import annotations

import struct

from cosmicai.exceptions import RendezvousProtocolError

MAGIC = b"\x00CRV"
PROTOCOL_VERSION = 1
PREAMBLE = MAGIC + bytes([PROTOCOL_VERSION])
PREAMBLE_SIZE = len(PREAMBLE)

HEADER = struct.Struct("!IB")  # length of (type + payload), type
HEADER_SIZE = HEADER.size  # 5
LENGTH_SIZE = 4

#: What a server accepts from a client: the largest request is far below this.
DEFAULT_MAX_REQUEST_FRAME = 4096
#: What a client accepts from a server: a WORLD frame grows with the world (about 43 bytes
#: per rank), so this bounds the world size a client can receive (about 390,000 ranks).
DEFAULT_MAX_RESPONSE_FRAME = 16 * 2**20


class FrameTooLargeError(RendezvousProtocolError):
    """A frame header announced more bytes than the receiver accepts."""


def encode_frame(message_type: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload) + 1, message_type) + payload


def parse_preamble(data: bytes) -> int:
    """The version of a complete preamble; raises if the magic is wrong."""
    if len(data) != PREAMBLE_SIZE or data[: len(MAGIC)] != MAGIC:
        raise RendezvousProtocolError(
            f"not a cosmicai rendezvous preamble: {data.hex()} (expected {MAGIC.hex()}vv)"
        )
    return data[len(MAGIC)]


class FrameDecoder:
    """Buffers bytes and returns complete frames, never holding more than one partial frame.

    A length above ``max_frame_size`` is refused as soon as its 4 bytes have arrived, before any
    of the frame is buffered, so a peer cannot make the receiver hold an oversized frame.
    """

    __slots__ = ("_buffer", "max_frame_size")

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add received bytes; return every frame now complete as (type, payload)."""
        buffer = self._buffer
        buffer += data
        frames: list[tuple[int, bytes]] = []
        offset = 0
        while len(buffer) - offset >= LENGTH_SIZE:
            (length,) = struct.unpack_from("!I", buffer, offset)
            if length == 0:
                raise RendezvousProtocolError("frame of length 0 (a frame has at least a type)")
            if length > self.max_frame_size:
                raise FrameTooLargeError(
                    f"frame of {length} bytes exceeds the limit of {self.max_frame_size}"
                )
            end = offset + LENGTH_SIZE + length
            if len(buffer) < end:
                break
            frames.append((buffer[offset + LENGTH_SIZE], bytes(buffer[offset + HEADER_SIZE : end])))
            offset = end
        if offset:
            del buffer[:offset]
        return frames
