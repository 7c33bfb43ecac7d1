"""Real servers on loopback for the rendezvous tests, and raw-socket helpers to speak to them
byte by byte."""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, ParamSpec

from cosmicai.rendezvous.server import RendezvousServer
from cosmicai.rendezvous.server.config import ServerConfig
from cosmicai.rendezvous.wire.framing import HEADER, HEADER_SIZE
from cosmicai.rendezvous.wire.messages import Message, decode

SECRET = b"test-deployment-secret-0123456789"
LOOPBACK = "127.0.0.1"

#: Short deadlines so that expiry tests take a fraction of a second.
FAST = ServerConfig(
    host=LOOPBACK,
    port=0,
    health_port=0,
    secret=SECRET,
    hello_timeout=1.0,
    idle_timeout=2.0,
    tcpunch_name_settle=0.05,
    tcpunch_wait=5.0,
    max_pair_wait=5.0,
    max_world_deadline=5.0,
    shutdown_grace=0.5,
)

P = ParamSpec("P")


def async_test(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test in its own event loop (pytest fixtures still apply)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


@asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[RendezvousServer]:
    async with RendezvousServer(replace(FAST, **overrides)) as server:
        yield server


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait for the server to reach a state (a synchronisation point, not a timing check)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)
    assert condition(), what


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LOOPBACK, port)


async def read_frame(reader: asyncio.StreamReader) -> Message:
    length, message_type = HEADER.unpack(await reader.readexactly(HEADER_SIZE))
    return decode(message_type, await reader.readexactly(length - 1))


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    try:
        async with asyncio.timeout(timeout):
            return await reader.read()
    except ConnectionResetError:
        return b""


def reset_on_close(writer: asyncio.StreamWriter) -> None:
    """Make close() send a RST, as a crashed client's kernel would."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
