"""The test harness's waiting helpers can fail: a regression in what they watch fails the test
that uses them, with the helper's message."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

import pytest

from harness.net import assert_connection_ends
from harness.rendezvous import eventually


def test_eventually_fails_naming_the_state_never_reached() -> None:
    # GIVEN a state that is never reached
    async def wait() -> None:
        await eventually(lambda: False, "the pair expired", timeout=0.05)

    # THEN waiting for it fails the test with the helper's message, not a bare TimeoutError
    with pytest.raises(AssertionError, match=r"not reached within 0.05 s: the pair expired"):
        asyncio.run(wait())


def test_eventually_returns_once_the_state_is_reached() -> None:
    async def wait() -> int:
        polls = 0

        def reached() -> bool:
            nonlocal polls
            polls += 1
            return polls >= 3

        await eventually(reached, "three polls", timeout=5)
        return polls

    assert asyncio.run(wait()) == 3


def test_assert_connection_ends_fails_while_the_other_side_stays_open() -> None:
    # GIVEN a connection whose other end sends something and stays open
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"still here")
        # THEN the helper fails the test, saying what was expected to close
        with pytest.raises(AssertionError, match=r"still open after 0.1 s: the server hung up"):
            assert_connection_ends(ours, "the server hung up", timeout=0.1)


def test_assert_connection_ends_accepts_a_close_after_data() -> None:
    ours, theirs = socket.socketpair()
    with ours:
        theirs.sendall(b"bye")
        threading.Timer(0.05, theirs.close).start()
        assert_connection_ends(ours, "closed", timeout=5)


def test_assert_connection_ends_accepts_a_reset() -> None:
    # GIVEN a TCP connection whose other end closes with a RST (SO_LINGER 0)
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname())
        theirs, _ = server.accept()
    with ours:
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        theirs.close()
        assert_connection_ends(ours, "reset", timeout=5)
