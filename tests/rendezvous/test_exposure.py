"""The server on a public address: what strangers (unauthenticated clients) cannot make it do.

One test per fault a hostile tester found (issue 11, items 1 to 3): each fails on the server as
it was and passes now. Real servers on loopback; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from cosmicai.exceptions import RendezvousConfigError
from cosmicai.rendezvous.cli import app
from cosmicai.rendezvous.client import RendezvousClient
from cosmicai.rendezvous.server import RendezvousServer, ServerConfig
from cosmicai.rendezvous.wire.auth import make_auth
from cosmicai.rendezvous.wire.framing import PREAMBLE
from cosmicai.rendezvous.wire.messages import Error, ErrorCode, Leave, encode
from harness.rendezvous import (
    FAST,
    LOOPBACK,
    SECRET,
    async_test,
    eventually,
    read_frame,
    read_to_eof,
    running_server,
)

pytestmark = pytest.mark.timeout(30)

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def held(count: int, port: int, first_bytes: bytes = b"") -> AsyncIterator[list[Stream]]:
    """``count`` connections that send ``first_bytes`` and then nothing; closed on exit."""
    streams: list[Stream] = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            streams.append((reader, writer))
            if first_bytes:
                writer.write(first_bytes)
                await writer.drain()
        yield streams
    finally:
        for _, writer in streams:
            writer.close()


async def register_alone(port: int, job: str, *, local_host: str = LOOPBACK) -> int:
    """An authenticated client registers a world of one; returns the world's size."""
    client = await RendezvousClient.connect(
        LOOPBACK, port, secret=SECRET, local_address=(local_host, 0), timeout=5
    )
    async with client:
        world = await client.register(job, 1, 0, deadline=5)
    return world.size


async def refused_at_once(port: int, *, local_host: str = LOOPBACK) -> bool:
    """True when the server closes a new connection before it says anything."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port, local_addr=(local_host, 0))
    writer.write(PREAMBLE)
    try:
        return await read_to_eof(reader, timeout=3) == b""
    finally:
        writer.close()


# -- 1. the health port -------------------------------------------------------------------------


@async_test
async def test_the_health_port_listens_on_loopback_only_by_default() -> None:
    # GIVEN a server whose rendezvous port listens on every address, health settings default
    config = ServerConfig(host="0.0.0.0", port=0, health_port=0, secret=SECRET)
    async with RendezvousServer(config) as server:
        # WHEN a client reaches the health port through another address of this host
        # (127.0.0.2 is this host too, but not the address the health port is bound to)
        # THEN it is refused, while the rendezvous port answers there
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.2", server.health_port)
        _, writer = await asyncio.open_connection("127.0.0.2", server.port)
        writer.close()
        assert server.health_host == "127.0.0.1"


@async_test
async def test_idle_sockets_cannot_starve_the_health_check() -> None:
    async with running_server() as server:
        # GIVEN more idle sockets on the health port than it serves at once (the old server
        # refused every new connection while 32 idle ones were held, 5 s each)
        async with held(40, server.health_port):
            await asyncio.sleep(0.1)
            # WHEN the container's health check runs (the real command, in a thread: it blocks)
            result = await asyncio.to_thread(
                CliRunner().invoke,
                app,
                ["healthcheck", "--health-port", str(server.health_port), "--timeout", "3"],
            )
        # THEN it passes
        assert result.exit_code == 0, result.output
        assert "ok" in result.output


# -- 2. unauthenticated connections -------------------------------------------------------------


@async_test
async def test_only_auth_is_accepted_before_auth() -> None:
    async with running_server() as server:
        # GIVEN a client that never authenticates WHEN it sends LEAVE (which used to be answered
        # and to restart the idle clock)
        reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
        writer.write(PREAMBLE + encode(Leave()))
        await reader.readexactly(len(PREAMBLE))
        # THEN the server answers AUTH_REQUIRED and closes
        message = await read_frame(reader)
        assert isinstance(message, Error) and message.code == ErrorCode.AUTH_REQUIRED, message
        assert "not LEAVE" in message.message
        assert await read_to_eof(reader) == b""
        writer.close()


@async_test
async def test_an_unauthenticated_connection_ends_at_its_hello_deadline_however_busy() -> None:
    async with running_server(hello_timeout=0.5, idle_timeout=30.0) as server:
        # GIVEN a client that sent its preamble and keeps trickling the bytes of an AUTH frame
        reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
        writer.write(PREAMBLE)
        await reader.readexactly(len(PREAMBLE))
        auth = encode(make_auth(SECRET))
        started = asyncio.get_running_loop().time()

        async def trickle() -> None:
            for byte in auth[:-1]:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.1)

        trickling = asyncio.create_task(trickle())
        # WHEN its hello deadline passes THEN it gets AUTH_REQUIRED (not the 30 s idle timeout)
        async with asyncio.timeout(5):
            message = await read_frame(reader)
        trickling.cancel()
        assert isinstance(message, Error) and message.code == ErrorCode.AUTH_REQUIRED, message
        assert "no AUTH within 0.5 s" in message.message
        assert asyncio.get_running_loop().time() - started < 2.0
        writer.close()


@async_test
async def test_strangers_cannot_take_the_connections_of_authenticated_clients() -> None:
    # GIVEN a server that keeps half its connections for authenticated clients
    async with running_server(max_connections=20, max_unauthenticated=10) as server:
        # AND a stranger holding every connection the server gives unauthenticated clients
        # (it used to be able to hold them all: 300 connections, LEAVE every 10 s)
        async with held(10, server.port, PREAMBLE) as strangers:
            await eventually(
                lambda: server.state.admission.unauthenticated == 10, "ten strangers held"
            )
            # WHEN the stranger opens one more THEN that one is closed at once
            assert await refused_at_once(server.port)
            # WHEN a worker connects from another address THEN it authenticates and registers,
            # in the place of the stranger's oldest connection
            assert await register_alone(server.port, "job-after", local_host="127.0.0.2") == 1
            assert await read_to_eof(strangers[0][0], timeout=3) == PREAMBLE  # then closed
        metrics = server.metrics
        assert metrics.value("limit_refusals_total", limit="unauthenticated") == 1
        assert metrics.value("limit_refusals_total", limit="unauthenticated_evicted") == 1


@async_test
async def test_connections_from_one_source_address_are_capped() -> None:
    async with running_server(max_connections_per_address=3) as server:
        # GIVEN three connections from 127.0.0.1
        async with held(3, server.port, PREAMBLE):
            await eventually(lambda: len(server.state.connections) == 3, "three held")
            # WHEN a fourth comes from the same address THEN it is closed at once
            assert await refused_at_once(server.port)
            # AND a client from another address is served
            assert not await refused_at_once(server.port, local_host="127.0.0.2")
        assert server.metrics.value("limit_refusals_total", limit="connections_per_address") == 1


@async_test
async def test_unauthenticated_connections_from_one_source_address_are_capped() -> None:
    async with running_server(max_unauthenticated_per_address=2) as server:
        async with held(2, server.port, PREAMBLE):
            await eventually(
                lambda: server.state.admission.unauthenticated == 2, "two strangers held"
            )
            assert await refused_at_once(server.port)
            assert not await refused_at_once(server.port, local_host="127.0.0.2")
        # An authenticated connection does not count: it left the unauthenticated budget.
        assert await register_alone(server.port, "job-from-loopback") == 1


def test_the_unauthenticated_budget_cannot_exceed_the_connections() -> None:
    with pytest.raises(RendezvousConfigError, match="max_unauthenticated"):
        replace(FAST, max_connections=10, max_unauthenticated=11)


# -- 3. TCPunch clients and authenticated worlds ------------------------------------------------


@async_test
async def test_tcpunch_waiters_cannot_exhaust_the_budget_of_authenticated_worlds() -> None:
    # GIVEN as many waiting TCPunch clients as authenticated clients may have waiting
    server_config = {"max_waiting": 4, "max_waiting_per_address": 4}
    async with running_server(**server_config) as server, AsyncExitStack() as stack:
        for index in range(4):
            sock = socket.create_connection((LOOPBACK, server.port))
            stack.callback(sock.close)
            sock.sendall(f"tcpunch-{index}".encode())
        await eventually(lambda: len(server.state.tcpunch_board) == 4, "four TCPunch waiters")
        # WHEN an authenticated client registers THEN it is accepted (it used to get
        # LIMIT_EXCEEDED: both kinds shared one budget)
        assert await register_alone(server.port, "job-beside-tcpunch") == 1
