"""The server as TCPunch/FMI clients meet it, on real loopback sockets, and the reference
server's faults (docs/rendezvous-protocol.md §2) shown fixed."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from cosmicai.rendezvous.client import tcpunch_pair
from cosmicai.rendezvous.server.connection import Connection
from cosmicai.rendezvous.wire.endpoint import Endpoint
from cosmicai.rendezvous.wire.tcpunch import RECORD_SIZE, decode_record, encode_record
from harness.rendezvous import (
    LOOPBACK,
    async_test,
    connect,
    eventually,
    read_to_eof,
    reset_on_close,
    running_server,
)

pytestmark = pytest.mark.timeout(30)


async def send_name(port: int, name: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await connect(port)
    writer.write(name)
    await writer.drain()
    return reader, writer


def own_endpoint(writer: asyncio.StreamWriter) -> Endpoint:
    return Endpoint.from_sockaddr(writer.get_extra_info("sockname"))


@pytest.mark.uvloop
@async_test
async def test_two_clients_get_own_record_then_peer_record_then_eof() -> None:
    async with running_server() as server:
        # GIVEN a first client that sent its pairing name and got its own record
        reader_a, writer_a = await send_name(server.port, b"fmi-0-1")
        assert await reader_a.readexactly(RECORD_SIZE) == encode_record(own_endpoint(writer_a))
        # WHEN a second client sends the same name
        reader_b, writer_b = await send_name(server.port, b"fmi-0-1")
        # THEN each receives exactly its own record, the other's, and then the close
        rest_a = await read_to_eof(reader_a)
        rest_b = await read_to_eof(reader_b)
        assert rest_a == encode_record(own_endpoint(writer_b))
        assert rest_b == encode_record(own_endpoint(writer_b)) + encode_record(
            own_endpoint(writer_a)
        )
        assert server.metrics.value("pairings_total", protocol="tcpunch") == 1
        writer_a.close()
        writer_b.close()


@pytest.mark.uvloop
@async_test
async def test_accepted_sockets_keep_alive_so_vanished_hosts_are_noticed() -> None:
    async with running_server() as server:
        reader, writer = await send_name(server.port, b"alive")
        await reader.readexactly(RECORD_SIZE)
        (conn,) = server.state.connections
        assert isinstance(conn, Connection)
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        writer.close()


@async_test
async def test_reference_client_pairs_through_the_server() -> None:
    async with running_server() as server:
        (own_a, peer_a), (own_b, peer_b) = await asyncio.gather(
            tcpunch_pair(LOOPBACK, server.port, b"x" * 100),
            tcpunch_pair(LOOPBACK, server.port, b"x" * 100),
        )
        assert (peer_a, peer_b) == (own_b, own_a)


@async_test
async def test_name_split_across_reads_is_joined() -> None:
    # GIVEN a settle time long enough to join a name sent in two pieces
    async with running_server(tcpunch_name_settle=0.5) as server:
        reader_a, writer_a = await send_name(server.port, b"split-")
        await asyncio.sleep(0.05)
        writer_a.write(b"name")
        await writer_a.drain()
        # WHEN the partner sends the whole name at once
        reader_b, writer_b = await send_name(server.port, b"split-name")
        # THEN they are paired under the joined name
        assert len(await read_to_eof(reader_a)) == 2 * RECORD_SIZE
        assert len(await read_to_eof(reader_b)) == 2 * RECORD_SIZE
        writer_a.close()
        writer_b.close()


@async_test
async def test_a_100_byte_name_is_complete_without_the_settle_time() -> None:
    # GIVEN a settle time far longer than this test's own deadline
    async with running_server(tcpunch_name_settle=20.0, hello_timeout=30.0) as server:
        reader, writer = await send_name(server.port, b"n" * 100)
        # THEN the record arrives at once: 100 bytes is the whole name
        async with asyncio.timeout(5):
            record = await reader.readexactly(RECORD_SIZE)
        assert decode_record(record) == own_endpoint(writer)
        writer.close()


@async_test
async def test_a_name_longer_than_100_bytes_is_refused() -> None:
    async with running_server() as server:
        reader, writer = await send_name(server.port, b"n" * 101)
        assert await read_to_eof(reader) == b""
        assert server.metrics.value("protocol_errors_total", kind="name_too_long") == 1
        writer.close()


@async_test
async def test_a_silent_client_blocks_nobody_and_is_dropped_at_its_deadline() -> None:
    async with running_server(hello_timeout=0.5) as server:
        # GIVEN a client that connects and sends nothing
        silent_reader, silent_writer = await connect(server.port)
        # WHEN two others pair meanwhile
        await asyncio.gather(
            tcpunch_pair(LOOPBACK, server.port, b"busy"),
            tcpunch_pair(LOOPBACK, server.port, b"busy"),
        )
        # THEN they were served, and the silent client is closed with nothing sent
        assert await read_to_eof(silent_reader) == b""
        assert server.metrics.value("timeouts_total", kind="hello") == 1
        silent_writer.close()


@async_test
async def test_bytes_after_the_name_drop_the_waiter() -> None:
    async with running_server() as server:
        reader, writer = await send_name(server.port, b"garbage")
        await reader.readexactly(RECORD_SIZE)
        writer.write(os.urandom(64))
        await writer.drain()
        assert await read_to_eof(reader) == b""
        await eventually(lambda: len(server.state.tcpunch_board) == 0, "waiter dropped")
        assert server.metrics.value("protocol_errors_total", kind="bytes_after_name") == 1
        writer.close()


@pytest.mark.uvloop
@async_test
async def test_a_waiter_that_left_is_never_paired() -> None:
    async with running_server() as server:
        # GIVEN a waiter that went away
        reader_a, writer_a = await send_name(server.port, b"left")
        await reader_a.readexactly(RECORD_SIZE)
        writer_a.close()
        await eventually(lambda: len(server.state.tcpunch_board) == 0, "waiter withdrawn")
        # WHEN a newcomer uses the same name
        reader_b, writer_b = await send_name(server.port, b"left")
        own_b = await reader_b.readexactly(RECORD_SIZE)
        # THEN it waits instead of receiving a dead address, and pairs with the next one
        own_c, peer_c = await tcpunch_pair(LOOPBACK, server.port, b"left")
        assert peer_c == decode_record(own_b)
        assert decode_record(await reader_b.readexactly(RECORD_SIZE)) == own_c
        writer_b.close()


@async_test
async def test_an_expired_waiter_is_closed_and_not_paired() -> None:
    async with running_server(tcpunch_wait=0.3) as server:
        reader_a, writer_a = await send_name(server.port, b"late")
        # THEN after its own record the expired waiter sees the close, not a partner
        assert len(await read_to_eof(reader_a)) == RECORD_SIZE
        assert server.metrics.value("timeouts_total", kind="tcpunch_wait") == 1
        reader_b, writer_b = await send_name(server.port, b"late")
        await reader_b.readexactly(RECORD_SIZE)
        await eventually(lambda: len(server.state.tcpunch_board) == 1, "newcomer waits")
        writer_a.close()
        writer_b.close()


@pytest.mark.uvloop
@async_test
async def test_partners_resetting_while_others_pair_do_not_hurt_the_server() -> None:
    # The reference server died of SIGPIPE when it wrote to waiters that had gone.
    async with running_server() as server:
        # GIVEN 50 waiters that reset their connections as their partners arrive
        waiters = [await send_name(server.port, f"gone-{i}".encode()) for i in range(50)]
        for reader, _ in waiters:
            await reader.readexactly(RECORD_SIZE)
        for _, writer in waiters:
            reset_on_close(writer)
            writer.close()
        partners = [send_name(server.port, f"gone-{i}".encode()) for i in range(50)]
        arrived = await asyncio.gather(*partners)
        # THEN the server is still up and pairs the next clients normally
        (own_a, peer_a), (own_b, peer_b) = await asyncio.gather(
            tcpunch_pair(LOOPBACK, server.port, b"after"),
            tcpunch_pair(LOOPBACK, server.port, b"after"),
        )
        assert (peer_a, peer_b) == (own_b, own_a)
        for _, writer in arrived:
            writer.close()


@async_test
async def test_waiting_limit_per_source_address() -> None:
    async with running_server(max_tcpunch_waiting_per_address=2) as server:
        held = [await send_name(server.port, f"w{i}".encode()) for i in range(2)]
        for reader, _ in held:
            await reader.readexactly(RECORD_SIZE)
        # WHEN a third client from the same address would have to wait
        reader, writer = await send_name(server.port, b"w3")
        # THEN it gets its record (sent before the decision) and is closed
        assert len(await read_to_eof(reader)) == RECORD_SIZE
        assert server.metrics.value("limit_refusals_total", limit="tcpunch_waiting") == 1
        # AND a client that pairs with a waiter needs no slot
        await tcpunch_pair(LOOPBACK, server.port, b"w0")
        writer.close()
        for _, held_writer in held:
            held_writer.close()


@async_test
async def test_connections_beyond_the_maximum_are_closed_at_once() -> None:
    async with running_server(max_connections=2, max_unauthenticated=2) as server:
        kept = [await connect(server.port) for _ in range(2)]
        await eventually(lambda: len(server.state.connections) == 2, "two connections open")
        reader, writer = await connect(server.port)
        assert await read_to_eof(reader) == b""
        assert server.metrics.value("connections_rejected_total") == 1
        for _, kept_writer in [*kept, (reader, writer)]:
            kept_writer.close()


@async_test
async def test_tcpunch_can_be_switched_off() -> None:
    async with running_server(tcpunch=False) as server:
        reader, writer = await send_name(server.port, b"name")
        assert await read_to_eof(reader) == b""
        assert server.metrics.value("protocol_errors_total", kind="tcpunch_disabled") == 1
        writer.close()
