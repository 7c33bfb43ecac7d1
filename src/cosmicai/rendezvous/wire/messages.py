"""The native protocol's typed messages: their type bytes, payloads and error codes.

Specified byte by byte in ``docs/rendezvous-protocol.md``; this module is the reference
encoder and decoder for both ends. Integers are big-endian. Decoding is strict: a payload
must be consumed exactly, so a field cannot be silently ignored or run past its frame.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from enum import IntEnum

from cosmicai.exceptions import RendezvousProtocolError
from cosmicai.rendezvous.wire.endpoint import Endpoint
from cosmicai.rendezvous.wire.framing import encode_frame

NONCE_SIZE = 16
MAC_SIZE = 32
#: Pairing names and job ids: 1..255 bytes of UTF-8 (one length byte).
MAX_NAME_BYTES = 255
#: Error messages are cut to this many bytes of UTF-8.
MAX_ERROR_MESSAGE_BYTES = 1024


class MessageType(IntEnum):
    # client -> server
    AUTH = 0x01
    PAIR = 0x02
    REGISTER = 0x03
    LEAVE = 0x04
    # server -> client
    AUTH_OK = 0x81
    ACCEPTED = 0x82
    PEER = 0x83
    WORLD = 0x84
    LEFT = 0x85
    ERROR = 0xFF


class ErrorCode(IntEnum):
    """Why the server refused or ended a request. An ERROR frame is always the last frame the
    server sends on a connection."""

    MALFORMED_MESSAGE = 1
    FRAME_TOO_LARGE = 2
    UNKNOWN_MESSAGE_TYPE = 3
    UNSUPPORTED_VERSION = 4
    UNEXPECTED_MESSAGE = 5
    INVALID_REQUEST = 6
    AUTH_REQUIRED = 10
    AUTH_BAD_MAC = 11
    AUTH_EXPIRED = 12
    AUTH_REPLAYED = 13
    LIMIT_EXCEEDED = 20
    SHUTTING_DOWN = 21
    IDLE_TIMEOUT = 22
    PAIR_TIMEOUT = 30
    WORLD_INCOMPLETE = 40
    WORLD_SIZE_MISMATCH = 41
    RANK_TAKEN = 42
    RANK_OUT_OF_RANGE = 43
    WORLD_CLOSED = 44


def error_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"ERROR_{code}"


@dataclass(frozen=True, slots=True)
class Auth:
    timestamp_ms: int
    nonce: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class Pair:
    name: str
    wait_ms: int
    private: Endpoint | None


@dataclass(frozen=True, slots=True)
class Register:
    job_id: str
    world_size: int
    rank: int
    deadline_ms: int
    private: Endpoint | None


@dataclass(frozen=True, slots=True)
class Leave:
    pass


@dataclass(frozen=True, slots=True)
class AuthOk:
    server_time_ms: int


@dataclass(frozen=True, slots=True)
class Accepted:
    public: Endpoint
    wait_ms: int


@dataclass(frozen=True, slots=True)
class Peer:
    public: Endpoint
    private: Endpoint | None


@dataclass(frozen=True, slots=True)
class PeerRecord:
    rank: int
    public: Endpoint
    private: Endpoint | None


@dataclass(frozen=True, slots=True)
class World:
    records: tuple[PeerRecord, ...]


@dataclass(frozen=True, slots=True)
class Left:
    pass


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    message: str


Request = Auth | Pair | Register | Leave
Response = AuthOk | Accepted | Peer | World | Left | Error
Message = Request | Response

_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


def encode_endpoint(endpoint: Endpoint | None) -> bytes:
    if endpoint is None:
        return b"\x00"
    host, port = endpoint.host, _U16.pack(endpoint.port)
    try:
        if ":" in host:
            return b"\x06" + socket.inet_pton(socket.AF_INET6, host) + port
        return b"\x04" + socket.inet_pton(socket.AF_INET, host) + port
    except OSError:
        raise ValueError(f"{host!r} is not an IP address") from None


def _str8(text: str, what: str) -> bytes:
    data = text.encode()
    if not 0 < len(data) <= MAX_NAME_BYTES:
        raise ValueError(f"{what} must be 1..{MAX_NAME_BYTES} bytes of UTF-8, not {len(data)}")
    return _U8.pack(len(data)) + data


def _str16(text: str) -> bytes:
    data = text.encode()[:MAX_ERROR_MESSAGE_BYTES]
    # Cutting may split a character; drop the partial tail so the field stays valid UTF-8.
    data = data.decode(errors="ignore").encode()
    return _U16.pack(len(data)) + data


def encode_payload(message: Message) -> tuple[MessageType, bytes]:
    match message:
        case Auth(timestamp_ms, nonce, mac):
            if len(nonce) != NONCE_SIZE or len(mac) != MAC_SIZE:
                raise ValueError(f"AUTH needs a {NONCE_SIZE}-byte nonce and {MAC_SIZE}-byte MAC")
            return MessageType.AUTH, _U64.pack(timestamp_ms) + nonce + mac
        case Pair(name, wait_ms, private):
            payload = _U32.pack(wait_ms) + encode_endpoint(private) + _str8(name, "pairing name")
            return MessageType.PAIR, payload
        case Register(job_id, world_size, rank, deadline_ms, private):
            payload = (
                _U32.pack(world_size)
                + _U32.pack(rank)
                + _U32.pack(deadline_ms)
                + encode_endpoint(private)
                + _str8(job_id, "job id")
            )
            return MessageType.REGISTER, payload
        case Leave():
            return MessageType.LEAVE, b""
        case AuthOk(server_time_ms):
            return MessageType.AUTH_OK, _U64.pack(server_time_ms)
        case Accepted(public, wait_ms):
            return MessageType.ACCEPTED, encode_endpoint(public) + _U32.pack(wait_ms)
        case Peer(public, private):
            return MessageType.PEER, encode_endpoint(public) + encode_endpoint(private)
        case World(records):
            parts = [_U32.pack(len(records))]
            for record in records:
                parts.append(_U32.pack(record.rank))
                parts.append(encode_endpoint(record.public))
                parts.append(encode_endpoint(record.private))
            return MessageType.WORLD, b"".join(parts)
        case Left():
            return MessageType.LEFT, b""
        case Error(code, text):
            return MessageType.ERROR, _U16.pack(code) + _str16(text)
    raise TypeError(f"not a rendezvous message: {message!r}")  # pragma: no cover


def encode(message: Message) -> bytes:
    """The whole frame (header and payload) of a message."""
    message_type, payload = encode_payload(message)
    return encode_frame(message_type, payload)


class _Reader:
    """Reads fields off a payload; every shortfall names the message and the field."""

    __slots__ = ("_data", "_offset", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._offset = 0
        self._what = what

    def _take(self, size: int, field: str) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise RendezvousProtocolError(
                f"{self._what}: payload ends inside {field} "
                f"({len(self._data) - self._offset} of {size} bytes left)"
            )
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def u8(self, field: str) -> int:
        return self._take(1, field)[0]

    def u16(self, field: str) -> int:
        value: int = _U16.unpack(self._take(2, field))[0]
        return value

    def u32(self, field: str) -> int:
        value: int = _U32.unpack(self._take(4, field))[0]
        return value

    def u64(self, field: str) -> int:
        value: int = _U64.unpack(self._take(8, field))[0]
        return value

    def raw(self, size: int, field: str) -> bytes:
        return self._take(size, field)

    def text(self, size: int, field: str) -> str:
        try:
            return self._take(size, field).decode()
        except UnicodeDecodeError:
            raise RendezvousProtocolError(f"{self._what}: {field} is not UTF-8") from None

    def str8(self, field: str) -> str:
        size = self.u8(f"{field} length")
        if size == 0:
            raise RendezvousProtocolError(f"{self._what}: {field} is empty")
        return self.text(size, field)

    def endpoint(self, field: str) -> Endpoint | None:
        family = self.u8(field)
        if family == 0:
            return None
        # socket's converters, not ipaddress: a WORLD frame holds two endpoints per rank.
        if family == 4:
            host = socket.inet_ntoa(self._take(4, field))
        elif family == 6:
            host = socket.inet_ntop(socket.AF_INET6, self._take(16, field))
        else:
            raise RendezvousProtocolError(
                f"{self._what}: {field} has address family {family} (0, 4 or 6)"
            )
        return Endpoint(host, self.u16(field))

    def required_endpoint(self, field: str) -> Endpoint:
        endpoint = self.endpoint(field)
        if endpoint is None:
            raise RendezvousProtocolError(f"{self._what}: {field} is missing")
        return endpoint

    def end(self) -> None:
        if self._offset != len(self._data):
            raise RendezvousProtocolError(
                f"{self._what}: {len(self._data) - self._offset} unexpected bytes after the payload"
            )


class UnknownMessageTypeError(RendezvousProtocolError):
    """A frame's type byte names no message of this protocol version."""


def decode(message_type: int, payload: bytes) -> Message:
    """The message of one frame; raises ``RendezvousProtocolError`` naming the fault."""
    try:
        kind = MessageType(message_type)
    except ValueError:
        raise UnknownMessageTypeError(f"unknown message type 0x{message_type:02x}") from None
    reader = _Reader(payload, kind.name)
    message: Message
    match kind:
        case MessageType.AUTH:
            message = Auth(
                reader.u64("timestamp"),
                reader.raw(NONCE_SIZE, "nonce"),
                reader.raw(MAC_SIZE, "mac"),
            )
        case MessageType.PAIR:
            wait_ms = reader.u32("wait")
            private = reader.endpoint("private endpoint")
            message = Pair(reader.str8("pairing name"), wait_ms, private)
        case MessageType.REGISTER:
            world_size = reader.u32("world size")
            rank = reader.u32("rank")
            deadline_ms = reader.u32("deadline")
            private = reader.endpoint("private endpoint")
            message = Register(reader.str8("job id"), world_size, rank, deadline_ms, private)
        case MessageType.LEAVE:
            message = Leave()
        case MessageType.AUTH_OK:
            message = AuthOk(reader.u64("server time"))
        case MessageType.ACCEPTED:
            message = Accepted(reader.required_endpoint("public endpoint"), reader.u32("wait"))
        case MessageType.PEER:
            message = Peer(
                reader.required_endpoint("public endpoint"), reader.endpoint("private endpoint")
            )
        case MessageType.WORLD:
            count = reader.u32("world size")
            # Every record takes at least 7 bytes; checking first stops a forged count from
            # making the decoder loop (or allocate) far beyond the frame.
            if count * 7 > len(payload):
                raise RendezvousProtocolError(
                    f"WORLD: {count} records cannot fit in {len(payload)} bytes"
                )
            records = []
            for _ in range(count):
                rank = reader.u32("rank")
                public = reader.required_endpoint("public endpoint")
                records.append(PeerRecord(rank, public, reader.endpoint("private endpoint")))
            message = World(tuple(records))
        case MessageType.LEFT:
            message = Left()
        case MessageType.ERROR:
            code = reader.u16("code")
            message = Error(code, reader.text(reader.u16("message length"), "message"))
    reader.end()
    return message
