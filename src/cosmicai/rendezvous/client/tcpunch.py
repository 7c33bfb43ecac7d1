"""A TCPunch client, as FMI's C++ client pairs (wire format in ``wire/tcpunch.py``)."""

from __future__ import annotations

import asyncio
import socket

from cosmicai.exceptions import RendezvousError, RendezvousTimeoutError
from cosmicai.rendezvous.wire.endpoint import Endpoint
from cosmicai.rendezvous.wire.tcpunch import MAX_NAME_BYTES, RECORD_SIZE, decode_record


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
