"""TCPunch's wire format, byte for byte (``docs/rendezvous-protocol.md``).

A TCPunch client connects and sends the raw pairing name: at most ``MAX_NAME_BYTES`` bytes,
no length, no terminator. The server answers at once with the client's own public endpoint as
an 8-byte record; when a second client sends the same name, each receives the other's record
and the server closes both sockets. A record is the IPv4 address (4 bytes, network order), the
port (2 bytes, big-endian) and 2 zero bytes: ``struct PeerConnectionData`` of the C++ client,
whose size is padded to 8.
"""

from __future__ import annotations

import socket
import struct

from cosmicai.exceptions import RendezvousProtocolError
from cosmicai.rendezvous.wire.endpoint import Endpoint

#: The reference server reads the name with one ``recv`` into a 100-byte buffer.
MAX_NAME_BYTES = 100
RECORD = struct.Struct("!4sH2x")
RECORD_SIZE = RECORD.size  # 8


def encode_record(endpoint: Endpoint) -> bytes:
    """The 8-byte record of an IPv4 endpoint; TCPunch has no room for IPv6."""
    try:
        packed = socket.inet_pton(socket.AF_INET, endpoint.host)
    except OSError:
        raise ValueError(f"TCPunch records hold IPv4 only, not {endpoint.host}") from None
    return RECORD.pack(packed, endpoint.port)


def decode_record(data: bytes) -> Endpoint:
    if len(data) != RECORD_SIZE:
        raise RendezvousProtocolError(
            f"a TCPunch record is {RECORD_SIZE} bytes, got {len(data)}: {data.hex()}"
        )
    packed_ip, port = RECORD.unpack(data)
    return Endpoint(socket.inet_ntoa(packed_ip), port)
