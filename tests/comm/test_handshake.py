"""The link handshake: both ends prove the job key; strangers are refused in time."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cosmicai.comm import StaticTcpLinks, authenticate_link, derive_job_key
from cosmicai.comm.handshake import (
    HANDSHAKE_VERSION,
    HELLO,
    HELLO_MAGIC,
    HELLO_SIZE,
    NONCE_SIZE,
    PROOF_SIZE,
    ROLE_HIGHER,
    ROLE_LOWER,
    link_proof,
)
from cosmicai.exceptions import PeerAuthError
from harness.worlds import JOB, KEY, tcp_endpoints

SIZE = 4


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    yield left, right
    left.close()
    right.close()


def in_thread(function: Callable[[], Any]) -> Callable[[], Any]:
    """Start ``function`` in a thread; the returned callable joins it and returns its outcome."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()

    def join() -> Any:
        thread.join(timeout=10)
        assert not thread.is_alive()
        return outcome.get("error", outcome.get("value"))

    return join


def authenticate(
    sock: socket.socket,
    rank: int,
    *,
    key: bytes = KEY,
    job_id: str = JOB,
    peer: int | None = None,
    seconds: float = 5.0,
) -> int:
    return authenticate_link(
        sock,
        rank=rank,
        size=SIZE,
        key=key,
        job_id=job_id,
        deadline=time.monotonic() + seconds,
        peer=peer,
    )


def test_both_ends_learn_the_proven_rank(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    other = in_thread(lambda: authenticate(right, 3))
    assert authenticate(left, 1, peer=3) == 3
    assert other() == 1


@pytest.mark.parametrize(
    ("left_args", "right_args", "fault"),
    [
        ({"key": b"w" * 32}, {}, "failed to prove the key"),
        ({"job_id": "another-job"}, {}, "failed to prove the key"),
        ({"peer": 2}, {}, "expected rank 2"),
    ],
    ids=["wrong key", "wrong job", "wrong rank"],
)
def test_a_mismatched_peer_is_refused_at_both_ends(
    pair: tuple[socket.socket, socket.socket],
    left_args: dict[str, Any],
    right_args: dict[str, Any],
    fault: str,
) -> None:
    left, right = pair

    def right_side() -> int:
        try:
            return authenticate(right, 3, **right_args)
        finally:
            right.shutdown(socket.SHUT_RDWR)

    def left_side() -> int:
        try:
            return authenticate(left, 1, **left_args)
        finally:
            left.shutdown(socket.SHUT_RDWR)

    other = in_thread(right_side)
    with pytest.raises(PeerAuthError, match=fault):
        left_side()
    assert isinstance(other(), PeerAuthError)


def stranger(sock: socket.socket, script: Callable[[socket.socket], None]) -> Callable[[], Any]:
    return in_thread(lambda: script(sock))


def test_garbage_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    done = stranger(right, lambda s: s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 64))
    with pytest.raises(PeerAuthError, match="not a cosmicai rank"):
        authenticate(left, 1)
    done()


def test_silence_is_refused_at_the_deadline(pair: tuple[socket.socket, socket.socket]) -> None:
    left, _right = pair
    with pytest.raises(PeerAuthError, match="before the deadline"):
        authenticate(left, 1, seconds=0.2)


def test_a_half_sent_hello_then_silence_is_refused(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    right.sendall(HELLO_MAGIC + bytes([HANDSHAKE_VERSION]))
    with pytest.raises(PeerAuthError, match="before the deadline"):
        authenticate(left, 1, seconds=0.2)


@pytest.mark.parametrize(
    ("claimed", "fault"),
    [(1, "not another rank"), (SIZE, "not another rank"), (2, "failed to prove")],
    ids=["own rank", "outside the world", "zero proof"],
)
def test_a_wrong_rank_or_a_forged_proof_is_refused(
    pair: tuple[socket.socket, socket.socket], claimed: int, fault: str
) -> None:
    left, right = pair
    right.sendall(HELLO.pack(HELLO_MAGIC, HANDSHAKE_VERSION, claimed, os.urandom(NONCE_SIZE)))
    right.sendall(b"\x00" * PROOF_SIZE)
    with pytest.raises(PeerAuthError, match=fault):
        authenticate(left, 1)


def test_an_echoed_nonce_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair

    def reflect(sock: socket.socket) -> None:
        _magic, version, _rank, nonce = HELLO.unpack(sock.recv(HELLO_SIZE, socket.MSG_WAITALL))
        sock.sendall(HELLO.pack(HELLO_MAGIC, version, 2, nonce))

    done = stranger(right, reflect)
    with pytest.raises(PeerAuthError, match="echoed"):
        authenticate(left, 1)
    done()


def test_a_reflected_proof_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    # GIVEN a stranger that sends a HELLO and then plays our own PROOF back to us
    left, right = pair

    def reflect(sock: socket.socket) -> None:
        sock.sendall(HELLO.pack(HELLO_MAGIC, HANDSHAKE_VERSION, 2, os.urandom(NONCE_SIZE)))
        sock.recv(HELLO_SIZE, socket.MSG_WAITALL)
        sock.sendall(sock.recv(PROOF_SIZE, socket.MSG_WAITALL))

    done = stranger(right, reflect)
    # THEN the role byte makes our proof worthless as theirs
    with pytest.raises(PeerAuthError, match="failed to prove"):
        authenticate(left, 1)
    done()


def test_a_recorded_proof_fails_on_a_new_connection(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    # GIVEN a proof rank 2 made on an earlier connection (its nonces are in it)
    old_nonce_1, old_nonce_2 = os.urandom(NONCE_SIZE), os.urandom(NONCE_SIZE)
    recorded = link_proof(KEY, JOB, (1, old_nonce_1), (2, old_nonce_2), ROLE_HIGHER)
    left, right = pair

    def replay(sock: socket.socket) -> None:
        sock.sendall(HELLO.pack(HELLO_MAGIC, HANDSHAKE_VERSION, 2, old_nonce_2))
        sock.sendall(recorded)

    done = stranger(right, replay)
    # THEN rank 1's fresh nonce makes the replay fail
    with pytest.raises(PeerAuthError, match="failed to prove"):
        authenticate(left, 1)
    done()


def test_the_proof_binds_every_field() -> None:
    base = (KEY, JOB, (1, b"a" * 32), (2, b"b" * 32), ROLE_LOWER)
    proof = link_proof(*base)
    variants = [
        (b"K" * 32, JOB, (1, b"a" * 32), (2, b"b" * 32), ROLE_LOWER),
        (KEY, JOB + "x", (1, b"a" * 32), (2, b"b" * 32), ROLE_LOWER),
        (KEY, JOB, (0, b"a" * 32), (2, b"b" * 32), ROLE_LOWER),
        (KEY, JOB, (1, b"a" * 32), (3, b"b" * 32), ROLE_LOWER),
        (KEY, JOB, (1, b"c" * 32), (2, b"b" * 32), ROLE_LOWER),
        (KEY, JOB, (1, b"a" * 32), (2, b"c" * 32), ROLE_LOWER),
        (KEY, JOB, (1, b"a" * 32), (2, b"b" * 32), ROLE_HIGHER),
    ]
    assert all(link_proof(*variant) != proof for variant in variants)


def test_job_keys_differ_per_job() -> None:
    assert derive_job_key(b"s" * 32, "a") != derive_job_key(b"s" * 32, "b")
    assert len(derive_job_key(b"s" * 32, "a")) == 32


def test_a_listening_rank_refuses_a_stranger_and_still_links_its_peer() -> None:
    # GIVEN two ranks with static links, and a stranger who knows a wrong key
    listeners, endpoints = tcp_endpoints(2)
    links = [
        StaticTcpLinks(r, 2, endpoints, key=KEY, job_id=JOB, listener=listeners[r])
        for r in range(2)
    ]
    try:
        intruder = socket.create_connection(endpoints[1].address)
        with intruder, pytest.raises(PeerAuthError):
            authenticate_link(
                intruder,
                rank=0,
                size=2,
                key=b"x" * 32,
                job_id=JOB,
                deadline=time.monotonic() + 5,
                peer=1,
            )
        # WHEN the real rank 0 links to rank 1
        accepted = in_thread(lambda: links[1].link(0, time.monotonic() + 5))
        channel = links[0].link(1, time.monotonic() + 5)
        # THEN the link works and the refusal is on record
        assert accepted().peer == 0 and channel.peer == 1
        deadline = time.monotonic() + 5
        while not links[1].refusals and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "failed to prove" in links[1].refusals[0]
        channel.close()
    finally:
        for maker in links:
            maker.close()
