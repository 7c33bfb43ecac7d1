"""TCPunch's wire format, byte for byte (DESIGN.md §6), and a minimal client for it.

A TCPunch client connects and sends the raw pairing name: at most ``MAX_NAME_BYTES`` bytes,
no length, no terminator. The server answers at once with the client's own public endpoint as
an 8-byte record; when a second client sends the same name, each receives the other's record
and the server closes both sockets. A record is the IPv4 address (4 bytes, network order), the
port (2 bytes, big-endian) and 2 zero bytes: ``struct PeerConnectionData`` of the C++ client,
whose size is padded to 8.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from cosmicai.exceptions import RendezvousError, RendezvousProtocolError, RendezvousTimeoutError
from cosmicai.rendezvous.endpoint import Endpoint

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


async def tcpunch_pair(
    host: str,
    port: int,
    name: bytes,
    *,
    timeout: float = 30.0,
    local_address: tuple[str, int] | None = None,
) -> tuple[Endpoint, Endpoint]:
    """Pair through a TCPunch server as FMI's C++ client does: (own public, peer public).

    For smoke tests of a deployment and for the benchmark; the communicator uses the native
    protocol (``cosmicai.rendezvous.client``).
    """
    if not 0 < len(name) <= MAX_NAME_BYTES:
        raise ValueError(f"a TCPunch pairing name is 1..{MAX_NAME_BYTES} bytes, not {len(name)}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if local_address is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(local_address)
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock)
    except TimeoutError:
        sock.close()
        raise RendezvousTimeoutError(f"no TCPunch server answered at {host}:{port}") from None
    except OSError as exc:
        sock.close()
        raise RendezvousError(f"cannot reach the TCPunch server at {host}:{port}: {exc}") from exc
    try:
        writer.write(name)
        async with asyncio.timeout(timeout):
            own = decode_record(await reader.readexactly(RECORD_SIZE))
            peer = decode_record(await reader.readexactly(RECORD_SIZE))
        return own, peer
    except asyncio.IncompleteReadError as exc:
        raise RendezvousError(
            f"the TCPunch server closed the connection after {len(exc.partial)} of "
            f"{RECORD_SIZE} bytes of a record (pairing name {name!r})"
        ) from None
    except TimeoutError:
        raise RendezvousTimeoutError(
            f"no partner for TCPunch pairing name {name!r} within {timeout:g} s"
        ) from None
    finally:
        writer.close()
