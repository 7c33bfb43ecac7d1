"""The native protocol on real loopback sockets: raw bytes for the protocol's edges, the client
library for its normal use."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from cosmicai.exceptions import (
    RendezvousAuthError,
    RendezvousError,
    RendezvousProtocolError,
    RendezvousRefusedError,
    RendezvousTimeoutError,
    WorldIncompleteError,
)
from cosmicai.rendezvous.client import BlockingRendezvousClient, RendezvousClient
from cosmicai.rendezvous.wire.auth import make_auth
from cosmicai.rendezvous.wire.endpoint import Endpoint
from cosmicai.rendezvous.wire.framing import PREAMBLE
from cosmicai.rendezvous.wire.messages import (
    Accepted,
    AuthOk,
    Error,
    ErrorCode,
    Left,
    Pair,
    Register,
    encode,
)
from harness.net import free_port
from harness.rendezvous import (
    LOOPBACK,
    SECRET,
    async_test,
    connect,
    eventually,
    read_frame,
    read_to_eof,
    running_server,
)

pytestmark = pytest.mark.timeout(30)

PRIVATE = Endpoint("10.1.2.3", 7000)


async def client(port: int, secret: bytes | None = SECRET) -> RendezvousClient:
    return await RendezvousClient.connect(LOOPBACK, port, secret=secret, timeout=5)


async def expect_error(reader: asyncio.StreamReader, code: ErrorCode) -> str:
    """The next frame is ERROR ``code`` and the server then closes; returns the message."""
    message = await read_frame(reader)
    assert isinstance(message, Error), message
    assert message.code == code, message
    assert await read_to_eof(reader) == b""
    return message.message


# -- connection and framing -------------------------------------------------------------


@pytest.mark.uvloop
@async_test
async def test_preamble_auth_and_request_split_into_single_bytes() -> None:
    async with running_server() as server:
        # GIVEN preamble, AUTH and PAIR sent one byte at a time
        reader, writer = await connect(server.port)
        stream = PREAMBLE + encode(make_auth(SECRET)) + encode(Pair("p", 5000, PRIVATE))
        for i in range(len(stream)):
            writer.write(stream[i : i + 1])
            await writer.drain()
        # THEN the server answers each in order
        assert await reader.readexactly(len(PREAMBLE)) == PREAMBLE
        assert isinstance(await read_frame(reader), AuthOk)
        accepted = await read_frame(reader)
        assert isinstance(accepted, Accepted)
        assert accepted.public == Endpoint.from_sockaddr(writer.get_extra_info("sockname"))
        writer.close()


@async_test
async def test_unsupported_version_gets_the_servers_version_and_an_error() -> None:
    async with running_server() as server:
        reader, writer = await connect(server.port)
        writer.write(b"\x00CRV\x09")
        assert await reader.readexactly(len(PREAMBLE)) == PREAMBLE
        text = await expect_error(reader, ErrorCode.UNSUPPORTED_VERSION)
        assert "version 9" in text
        writer.close()


@async_test
async def test_zero_byte_without_the_magic_is_dropped_silently() -> None:
    async with running_server() as server:
        reader, writer = await connect(server.port)
        writer.write(b"\x00GET / HTTP/1.1\r\n")
        assert await read_to_eof(reader) == b""
        assert server.metrics.value("protocol_errors_total", kind="bad_magic") == 1
        writer.close()


@pytest.mark.uvloop
@async_test
async def test_oversized_frame_is_refused_from_its_header() -> None:
    async with running_server(max_frame_bytes=256) as server:
        reader, writer = await connect(server.port)
        # WHEN only a header announcing 1 MiB is sent
        writer.write(PREAMBLE + (2**20).to_bytes(4, "big") + b"\x02")
        await reader.readexactly(len(PREAMBLE))
        # THEN the server refuses at once, without waiting for (or buffering) the payload
        text = await expect_error(reader, ErrorCode.FRAME_TOO_LARGE)
        assert "1048576 bytes exceeds the limit of 256" in text
        writer.close()


@async_test
async def test_malformed_and_unknown_messages_are_named() -> None:
    async with running_server() as server:
        reader, writer = await connect(server.port)
        writer.write(PREAMBLE + b"\x00\x00\x00\x03\x02\x00\x00")  # PAIR cut inside "wait"
        await reader.readexactly(len(PREAMBLE))
        assert "PAIR: payload ends inside wait" in await expect_error(
            reader, ErrorCode.MALFORMED_MESSAGE
        )
        writer.close()
        reader, writer = await connect(server.port)
        writer.write(PREAMBLE + b"\x00\x00\x00\x01\x42")
        await reader.readexactly(len(PREAMBLE))
        assert "0x42" in await expect_error(reader, ErrorCode.UNKNOWN_MESSAGE_TYPE)
        writer.close()


@async_test
async def test_server_messages_from_a_client_are_unexpected() -> None:
    async with running_server() as server:
        reader, writer = await connect(server.port)
        writer.write(PREAMBLE + encode(make_auth(SECRET)) + encode(Left()))
        await reader.readexactly(len(PREAMBLE))
        assert isinstance(await read_frame(reader), AuthOk)
        assert "sent by servers" in await expect_error(reader, ErrorCode.UNEXPECTED_MESSAGE)
        writer.close()


@async_test
async def test_client_disconnecting_mid_frame_leaves_nothing_behind() -> None:
    async with running_server() as server:
        reader, writer = await connect(server.port)
        writer.write(PREAMBLE + encode(make_auth(SECRET))[:20])
        await reader.readexactly(len(PREAMBLE))
        writer.close()
        await eventually(lambda: not server.state.connections, "connection cleaned up")


@async_test
async def test_idle_connection_is_closed_with_an_error() -> None:
    async with running_server(idle_timeout=0.3) as server:
        reader, writer = await connect(server.port)
        writer.write(PREAMBLE)
        await reader.readexactly(len(PREAMBLE))
        assert "no request for 0.3 s" in await expect_error(reader, ErrorCode.IDLE_TIMEOUT)
        writer.close()


# -- authentication ---------------------------------------------------------------------


@async_test
async def test_request_without_auth_is_refused() -> None:
    async with running_server() as server:
        conn = await client(server.port, secret=None)
        with pytest.raises(RendezvousAuthError, match="requires AUTH") as refused:
            await conn.pair("p", wait=1)
        assert refused.value.code == ErrorCode.AUTH_REQUIRED
        assert server.metrics.value("auth_failures_total", reason="required") == 1
        await conn.close()


@async_test
async def test_wrong_secret_is_refused() -> None:
    async with running_server() as server:
        with pytest.raises(RendezvousAuthError, match="MAC does not match") as refused:
            await client(server.port, secret=b"another-deployment-secret-xxxxxxx")
        assert refused.value.code == ErrorCode.AUTH_BAD_MAC


@async_test
async def test_stale_timestamp_is_refused() -> None:
    async with running_server(auth_window=30.0) as server:
        reader, writer = await connect(server.port)
        writer.write(PREAMBLE + encode(make_auth(SECRET, now=time.time() - 3600)))
        await reader.readexactly(len(PREAMBLE))
        assert "30 s from the server's clock" in await expect_error(reader, ErrorCode.AUTH_EXPIRED)
        writer.close()


@pytest.mark.uvloop
@async_test
async def test_replayed_auth_is_refused_on_another_connection() -> None:
    async with running_server() as server:
        # GIVEN an AUTH frame captured from a successful connection
        captured = encode(make_auth(SECRET))
        reader, writer = await connect(server.port)
        writer.write(PREAMBLE + captured)
        await reader.readexactly(len(PREAMBLE))
        assert isinstance(await read_frame(reader), AuthOk)
        # WHEN the same bytes are sent on a new connection
        replay_reader, replay_writer = await connect(server.port)
        replay_writer.write(PREAMBLE + captured)
        await replay_reader.readexactly(len(PREAMBLE))
        # THEN the replay is refused
        assert "replay" in await expect_error(replay_reader, ErrorCode.AUTH_REPLAYED)
        assert server.metrics.value("auth_failures_total", reason="replayed") == 1
        writer.close()
        replay_writer.close()


@async_test
async def test_server_without_secret_serves_clients_with_or_without_auth() -> None:
    async with running_server(secret=None) as server:
        with_auth, without = await client(server.port), await client(server.port, secret=None)
        a, b = await asyncio.gather(with_auth.pair("open"), without.pair("open"))
        assert a.peer_public == b.public
        await with_auth.close()
        await without.close()


# -- pairing ----------------------------------------------------------------------------


@async_test
async def test_pairing_exchanges_public_and_private_endpoints() -> None:
    async with running_server() as server:
        a, b = await client(server.port), await client(server.port)
        result_a, result_b = await asyncio.gather(
            a.pair("job-7/0-1", private=PRIVATE), b.pair("job-7/0-1")
        )
        assert result_a.public == a.local_endpoint  # no NAT on loopback
        assert result_a.peer_public == b.local_endpoint
        assert result_a.peer_private == b.local_endpoint  # b reported its local endpoint
        assert result_b.peer_private == PRIVATE
        # AND the connection stays usable for another request
        c = await client(server.port)
        again_a, _ = await asyncio.gather(a.pair("second"), c.pair("second"))
        assert again_a.peer_public == c.local_endpoint
        for conn in (a, b, c):
            await conn.close()


@async_test
async def test_pair_timeout_is_an_explicit_error() -> None:
    async with running_server() as server:
        conn = await client(server.port)
        with pytest.raises(RendezvousTimeoutError, match="no partner for pairing name 'alone'"):
            await conn.pair("alone", wait=0.2)
        assert server.metrics.value("timeouts_total", kind="pair") == 1
        await conn.close()


@async_test
async def test_a_native_waiter_that_left_is_not_paired() -> None:
    async with running_server() as server:
        gone = await client(server.port)
        await gone.request_pair("n")
        await gone.close()
        await eventually(lambda: len(server.state.native_board) == 0, "waiter withdrawn")
        a, b = await client(server.port), await client(server.port)
        await a.request_pair("n")
        result = await b.pair("n")
        assert result.peer_public == a.local_endpoint
        await a.close()
        await b.close()


@async_test
async def test_leave_withdraws_a_pending_pairing() -> None:
    async with running_server() as server:
        a = await client(server.port)
        await a.request_pair("n")
        await a.leave()
        assert len(server.state.native_board) == 0
        b = await client(server.port)
        await b.request_pair("n")
        assert len(server.state.native_board) == 1  # b waits: a is no longer there
        # AND a's connection can be used again
        result = await a.pair("n")
        assert result.peer_public == b.local_endpoint
        await a.close()
        await b.close()


@async_test
async def test_second_request_while_pending_is_unexpected() -> None:
    async with running_server() as server:
        reader, writer = await connect(server.port)
        writer.write(
            PREAMBLE
            + encode(make_auth(SECRET))
            + encode(Pair("a", 5000, None))
            + encode(Pair("b", 5000, None))
        )
        await reader.readexactly(len(PREAMBLE))
        assert isinstance(await read_frame(reader), AuthOk)
        assert isinstance(await read_frame(reader), Accepted)
        assert "send LEAVE first" in await expect_error(reader, ErrorCode.UNEXPECTED_MESSAGE)
        await eventually(lambda: len(server.state.native_board) == 0, "pending pair withdrawn")
        writer.close()


# -- worlds -----------------------------------------------------------------------------


@pytest.mark.uvloop
@async_test
async def test_world_completes_and_every_rank_gets_every_record() -> None:
    async with running_server() as server:
        # GIVEN 5 ranks registering in a shuffled order, each with its private endpoint
        clients = [await client(server.port) for _ in range(5)]
        privates = [Endpoint("10.0.0.1", 9000 + rank) for rank in range(5)]
        results = await asyncio.gather(
            *(
                clients[rank].register("run-1", 5, rank, private=privates[rank])
                for rank in (3, 0, 4, 1, 2)
            )
        )
        # THEN every rank holds the same 5 records in rank order
        for result in results:
            assert result.size == 5
            assert [peer.rank for peer in result.peers] == [0, 1, 2, 3, 4]
            assert [peer.private for peer in result.peers] == privates
            assert [peer.public for peer in result.peers] == [c.local_endpoint for c in clients]
        assert server.metrics.value("worlds_completed_total") == 1
        assert server.state.limits.total == 0
        for conn in clients:
            await conn.close()


@pytest.mark.uvloop
@async_test
async def test_partial_world_is_an_error_to_every_registered_rank() -> None:
    async with running_server() as server:
        # GIVEN a world of 3 where only ranks 0 and 1 register before the deadline
        clients = [await client(server.port) for _ in range(2)]
        outcomes = await asyncio.gather(
            *(c.register("run-2", 3, rank, deadline=0.3) for rank, c in enumerate(clients)),
            return_exceptions=True,
        )
        # THEN both get WORLD_INCOMPLETE naming the missing rank
        for outcome in outcomes:
            assert isinstance(outcome, WorldIncompleteError)
            assert "2 of 3 ranks registered; missing rank(s) 2" in str(outcome)
        assert server.metrics.value("worlds_failed_total", reason="deadline") == 1
        # AND the late rank is told the world is over instead of waiting for nothing
        late = await client(server.port)
        with pytest.raises(RendezvousRefusedError, match="already failed") as refused:
            await late.register("run-2", 3, 2)
        assert refused.value.code == ErrorCode.WORLD_CLOSED
        for conn in [*clients, late]:
            await conn.close()


@async_test
async def test_registration_errors_name_the_fault() -> None:
    async with running_server(max_world_size=8) as server:
        first = await client(server.port)
        await first.request_world("run-3", 4, 0)
        cases = [
            (("run-3", 5, 1), ErrorCode.WORLD_SIZE_MISMATCH, "has size 4, not 5"),
            (("run-3", 4, 0), ErrorCode.RANK_TAKEN, "rank 0 of world 'run-3' is already"),
            (("run-3", 4, 4), ErrorCode.RANK_OUT_OF_RANGE, "rank 4 is outside"),
            (("run-4", 9, 0), ErrorCode.LIMIT_EXCEEDED, "exceeds this server's limit of 8"),
        ]
        for args, code, text in cases:
            conn = await client(server.port)
            with pytest.raises(RendezvousRefusedError, match=text) as refused:
                await conn.register(*args)
            assert refused.value.code == code
            await conn.close()
        await first.close()


@async_test
async def test_a_rank_that_disconnects_can_register_again() -> None:
    async with running_server() as server:
        # GIVEN rank 1 of 2 registered and then gone
        gone = await client(server.port)
        await gone.request_world("run-5", 2, 1)
        await gone.close()
        await eventually(lambda: server.state.worlds.registered == 0, "rank 1 dropped")
        # WHEN rank 0 and a new rank 1 register
        rank0, rank1 = await client(server.port), await client(server.port)
        world0, world1 = await asyncio.gather(
            rank0.register("run-5", 2, 0), rank1.register("run-5", 2, 1)
        )
        # THEN the world holds the new rank 1, not the gone one
        assert world0.peers[1].public == rank1.local_endpoint
        assert world0.peers == world1.peers
        await rank0.close()
        await rank1.close()


@async_test
async def test_leave_unregisters_a_rank() -> None:
    async with running_server() as server:
        rank0 = await client(server.port)
        await rank0.request_world("run-6", 2, 0)
        await rank0.leave()
        assert server.state.worlds.registered == 0
        await rank0.close()


@async_test
async def test_world_of_one_completes_after_its_accepted() -> None:
    async with running_server() as server:
        reader, writer = await connect(server.port)
        writer.write(PREAMBLE + encode(make_auth(SECRET)) + encode(Register("solo", 1, 0, 1, None)))
        await reader.readexactly(len(PREAMBLE))
        assert isinstance(await read_frame(reader), AuthOk)
        assert isinstance(await read_frame(reader), Accepted)
        world = await read_frame(reader)
        assert type(world).__name__ == "World"
        writer.close()


@async_test
async def test_blocking_client_registers_from_threads() -> None:
    async with running_server() as server:

        def rank(r: int) -> tuple[int, int]:
            with BlockingRendezvousClient(LOOPBACK, server.port, secret=SECRET) as conn:
                world = conn.register("run-7", 3, r)
                return world.rank, world.size

        results = await asyncio.gather(*(asyncio.to_thread(rank, r) for r in range(3)))
        assert sorted(results) == [(0, 3), (1, 3), (2, 3)]


# -- client socket options, shutdown, health --------------------------------------------


@async_test
async def test_client_binds_the_given_local_port_and_shares_it() -> None:
    async with running_server() as server:
        # GIVEN a free local port
        port = free_port()
        # WHEN the client binds it
        conn = await RendezvousClient.connect(
            LOOPBACK, server.port, secret=SECRET, local_address=(LOOPBACK, port)
        )
        # THEN it reports it, and another socket may listen on it at the same time
        assert conn.local_endpoint == Endpoint(LOOPBACK, port)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((LOOPBACK, port))
        listener.listen()
        listener.close()
        await conn.close()


@pytest.mark.uvloop
@async_test
async def test_shutdown_tells_waiting_clients() -> None:
    server_cm = running_server()
    server = await server_cm.__aenter__()
    waiting = await client(server.port)
    await waiting.request_world("run-8", 2, 0)
    await server_cm.__aexit__(None, None, None)
    with pytest.raises(RendezvousRefusedError, match="shutting down") as refused:
        await waiting.wait_world()
    assert refused.value.code == ErrorCode.SHUTTING_DOWN
    await waiting.close()


@async_test
async def test_unreachable_server_is_named() -> None:
    port = free_port()
    with pytest.raises(RendezvousError, match=f"cannot reach the rendezvous server at .*:{port}"):
        await client(port)


@async_test
async def test_a_server_that_is_not_native_is_named() -> None:
    # GIVEN something on the port that closes every connection (e.g. TCPunch-only software)
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    other = await asyncio.start_server(hang_up, LOOPBACK, 0)
    port = other.sockets[0].getsockname()[1]
    # THEN the client says what happened instead of hanging
    with pytest.raises(RendezvousProtocolError, match="closed the connection during the preamble"):
        await client(port)
    other.close()
    await other.wait_closed()
