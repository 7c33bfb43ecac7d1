"""Hole-punched links on loopback: a real rendezvous server (in-process, 127.0.0.1), every rank
a thread with its own punch_links maker and communicator.

Loopback has no NAT, so these tests cover the link maker's own logic: registration, the
shared port, accept racing connect, the handshake on every candidate, the keep/close decision,
strangers, resuming in slices, deadlines. tests/netns/test_comm_nat.py covers real NATs.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cosmicai.comm import Communicator, FallbackLinks, StoreLinks, derive_job_key
from cosmicai.comm.frames import FrameKind
from cosmicai.comm.handshake import authenticate_link
from cosmicai.comm.links import LinkMaker
from cosmicai.comm.punch import PunchLinks, punch_links
from cosmicai.exceptions import CommError, CommTimeoutError, PeerAuthError
from cosmicai.local import LocalRendezvous
from cosmicai.rendezvous.wire import Endpoint
from cosmicai.storage import LocalStorage
from harness.net import LOOPBACK, assert_connection_ends, free_port
from harness.rendezvous import FAST, SECRET
from harness.worlds import BUCKET, CountingLinks


@dataclass
class Rendezvous:
    port: int
    secret: bytes | None


def job_name(tag: str) -> str:
    return f"punch-{tag}-{time.monotonic_ns()}"


def make_punch(
    server: Rendezvous, rank: int, size: int, job: str, *, deadline_s: float = 10.0, **kw: Any
) -> PunchLinks:
    maker = punch_links(
        rank=rank,
        size=size,
        job_id=job,
        key=derive_job_key(b"deployment-secret-for-tests", job),
        rendezvous=Endpoint(LOOPBACK, server.port),
        rendezvous_secret=server.secret,
        deadline_s=deadline_s,
        **kw,
    )
    assert isinstance(maker, PunchLinks)
    return maker


@dataclass
class RankResult:
    rank: int
    value: Any = None
    error: BaseException | None = None
    maker: PunchLinks | None = None


def run_ranks(
    size: int,
    body: Callable[[Communicator, PunchLinks], Any],
    server: Rendezvous,
    *,
    job: str | None = None,
    wrap: Callable[[PunchLinks], LinkMaker] | None = None,
    after_register: Callable[[int, PunchLinks], None] | None = None,
    deadline_s: float = 10.0,
    **kw: Any,
) -> list[RankResult]:
    """``body`` on every rank, each a thread that registers, links lazily and closes."""
    job = job or job_name(f"n{size}")
    results = [RankResult(rank) for rank in range(size)]

    def main(rank: int) -> None:
        try:
            maker = make_punch(server, rank, size, job, **kw)
        except BaseException as exc:
            results[rank].error = exc
            return
        results[rank].maker = maker
        if after_register is not None:
            after_register(rank, maker)
        links = wrap(maker) if wrap is not None else maker
        with Communicator(rank, size, links, deadline_s=deadline_s) as comm:
            try:
                results[rank].value = body(comm, maker)
            except BaseException as exc:
                results[rank].error = exc

    threads = [threading.Thread(target=main, args=(rank,)) for rank in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(deadline_s * 3 + 10)
    assert not any(thread.is_alive() for thread in threads), "a rank hung past its deadline"
    return results


def values(results: list[RankResult]) -> list[Any]:
    errors = [f"rank {r.rank}: {type(r.error).__name__}: {r.error}" for r in results if r.error]
    assert not errors, "; ".join(errors)
    return [r.value for r in results]


@pytest.fixture
def server() -> Iterator[Rendezvous]:
    """The real server on an event loop of its own thread, for the duration of a test."""
    config = replace(FAST, idle_timeout=30.0, max_world_deadline=30.0)
    running = LocalRendezvous(config)
    with running:
        yield Rendezvous(running.port, config.secret)


# -- collectives over punched links ----------------------------------------------------------


@pytest.mark.parametrize("size", [2, 3, 4, 5])
def test_collectives_run_over_punched_links(server: Rendezvous, size: int) -> None:
    def body(comm: Communicator, maker: PunchLinks) -> dict[str, Any]:
        local = np.arange(4, dtype=np.float64) * (comm.rank + 1)
        total = np.empty_like(local)
        comm.Allreduce(local, total)
        return {
            "sum": comm.allreduce(comm.rank + 1),
            "bcast": comm.bcast({"from": comm.rank} if comm.rank == size - 1 else None, size - 1),
            "gather": comm.allgather(comm.rank * 10),
            "Allreduce": total.tolist(),
            "kinds": comm.link_stats().by_kind,
            "outcomes": dict(maker.outcomes),
        }

    results = values(run_ranks(size, body, server))
    expected_total = (np.arange(4, dtype=np.float64) * sum(range(1, size + 1))).tolist()
    for rank, result in enumerate(results):
        assert result["sum"] == size * (size + 1) // 2
        assert result["bcast"] == {"from": size - 1}
        assert result["gather"] == [r * 10 for r in range(size)]
        assert result["Allreduce"] == expected_total
        # Every link the collectives needed is a direct TCP link made by the punching maker.
        assert set(result["kinds"]) == {"tcp"}
        assert sum(result["kinds"].values()) == len(result["outcomes"]) >= 1
        for peer, outcome in result["outcomes"].items():
            assert outcome.peer == peer != rank
            assert outcome.via in ("connect", "accept")
            assert outcome.route in ("public", "private")
            assert outcome.endpoint.host == LOOPBACK


def test_links_are_made_once_and_reused(server: Rendezvous) -> None:
    size = 4
    counters: dict[int, CountingLinks] = {}

    def wrap(maker: PunchLinks) -> LinkMaker:
        counters[maker.rank] = CountingLinks(maker)
        return counters[maker.rank]

    def body(comm: Communicator, maker: PunchLinks) -> tuple[int, int]:
        for _ in range(20):
            comm.allreduce(1.5)
            comm.barrier()
            comm.bcast("x")
        return comm.link_stats().links, len(maker.outcomes)

    results = values(run_ranks(size, body, server, wrap=wrap))
    for rank, (links, punched) in enumerate(results):
        asked = counters[rank].asked
        # Each peer was asked for once, however many collectives used the edge.
        assert len(asked) == len(set(asked)) == links == punched


def test_both_ends_keep_the_same_connection_when_several_complete(server: Rendezvous) -> None:
    # GIVEN a private endpoint that differs from the public one (127.0.0.2 reaches the same
    # listener), so each pair can complete up to three connections at once
    size = 4

    def body(comm: Communicator, maker: PunchLinks) -> list[int]:
        received = []
        for round_ in range(3):
            for peer in range(size):
                if peer != comm.rank:
                    comm.send((comm.rank, round_), peer, tag=round_)
            for peer in range(size):
                if peer != comm.rank:
                    source, got_round = comm.recv(peer, tag=round_)
                    assert (source, got_round) == (peer, round_)
                    received.append(source)
        return received

    results = values(run_ranks(size, body, server, private_host="127.0.0.2"))
    # THEN every pair talks both ways over one link: both ends kept the same socket
    for rank, received in enumerate(results):
        assert sorted(received) == sorted([p for p in range(size) if p != rank] * 3)


def test_a_stranger_is_refused_and_the_link_still_forms(
    server: Rendezvous, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cosmicai.comm.punch")
    size = 2
    makers: dict[int, PunchLinks] = {}
    registered = threading.Barrier(size + 1, timeout=20)
    strangers_done = threading.Event()

    def after_register(rank: int, maker: PunchLinks) -> None:
        makers[rank] = maker
        registered.wait()
        assert strangers_done.wait(20)

    outcome: dict[str, Any] = {}

    def impostor(port: int) -> None:
        # Knows the protocol and the job id, claims to be rank 0, but has the wrong key.
        with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
            try:
                authenticate_link(
                    sock,
                    rank=0,
                    size=size,
                    key=b"not-the-job-key-0123456789abcdef",
                    job_id="whatever",
                    deadline=time.monotonic() + 5,
                )
            except PeerAuthError as exc:
                outcome["impostor"] = exc

    def body(comm: Communicator, maker: PunchLinks) -> Any:
        return comm.allreduce(comm.rank + 1)

    holder: list[list[RankResult]] = []
    runner = threading.Thread(
        target=lambda: holder.append(run_ranks(size, body, server, after_register=after_register))
    )
    runner.start()
    registered.wait()
    target = makers[1]
    try:
        # WHEN strangers reach rank 1's port before the ranks link: one sends garbage, one says
        # nothing at all, one fails the proof
        garbage = socket.create_connection((LOOPBACK, target.port), timeout=5)
        garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 20)
        silent = socket.create_connection((LOOPBACK, target.port), timeout=5)
        impostor_thread = threading.Thread(target=impostor, args=(target.port,))
        impostor_thread.start()
        impostor_thread.join(10)
        # The garbage sender's connection is closed (reset, as it sent more than was read)
        assert_connection_ends(garbage, "rank 1 kept a connection that sent garbage")
        garbage.close()
        # The impostor may finish before rank 1 has checked its proof: wait for the verdict.
        limit = time.monotonic() + 10
        while len(target.refusals) < 2 and time.monotonic() < limit:
            time.sleep(0.005)
        refusals = " | ".join(target.refusals)
    finally:
        strangers_done.set()
    runner.join(60)
    silent.close()

    # THEN the ranks linked anyway and the refusals are on record
    assert values(holder[0]) == [3, 3]
    assert isinstance(outcome.get("impostor"), PeerAuthError)
    assert "instead of a link HELLO" in refusals
    assert "failed to prove the key" in refusals
    assert "refused a connection" in caplog.text


# -- resuming, deadlines, fallback -----------------------------------------------------------


def test_a_link_resumes_across_short_calls(server: Rendezvous) -> None:
    # GIVEN two registered ranks; rank 1 asks for the link in 10 ms slices, rank 0 only later
    job = job_name("resume")
    makers: list[PunchLinks] = [None, None]  # type: ignore[list-item]
    threads = [
        threading.Thread(target=lambda r=rank: makers.__setitem__(r, make_punch(server, r, 2, job)))
        for rank in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    lower, higher = makers
    follower: dict[str, Any] = {"slices": 0}

    def follow() -> None:
        started = time.monotonic()
        while time.monotonic() < started + 10:
            try:
                follower["channel"] = higher.link(0, time.monotonic() + 0.01)
                return
            except CommTimeoutError:
                follower["slices"] += 1

    thread = threading.Thread(target=follow)
    thread.start()
    time.sleep(0.3)
    channel = lower.link(1, time.monotonic() + 5)
    thread.join(15)
    try:
        # THEN the follower's many timed-out calls added up to one attempt
        assert follower["slices"] >= 5
        assert "channel" in follower
        assert higher.outcomes[0].seconds >= 0.3
        # and both ends hold the two ends of one connection
        deadline = time.monotonic() + 5
        channel.send(FrameKind.OBJECT, 5, [b"ping"], deadline)
        assert bytes(follower["channel"].recv(5, deadline).payload) == b"ping"
        follower["channel"].send(FrameKind.OBJECT, 6, [b"pong"], deadline)
        assert bytes(channel.recv(6, deadline).payload) == b"pong"
        with pytest.raises(CommError, match="already made"):
            lower.link(1, time.monotonic() + 1)
    finally:
        channel.close()
        follower["channel"].close()
        for maker in makers:
            maker.close()


def test_fallback_links_choose_the_punched_link(server: Rendezvous, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    job = job_name("fallback")
    size = 3

    def wrap(maker: PunchLinks) -> LinkMaker:
        store = StoreLinks(maker.rank, storage, BUCKET, f"comm/{job}/", poll_max_s=0.01)
        return FallbackLinks(maker, store, link_deadline_s=5)

    def body(comm: Communicator, maker: PunchLinks) -> Any:
        return comm.allreduce(comm.rank), comm.link_stats().by_kind

    results = values(run_ranks(size, body, server, job=job, wrap=wrap))
    for total, kinds in results:
        assert total == 3
        assert set(kinds) == {"tcp"}


def test_a_peer_that_never_links_times_out_naming_what_was_tried(server: Rendezvous) -> None:
    job = job_name("absent")
    makers: list[PunchLinks] = []
    threads = [
        threading.Thread(target=lambda r=rank: makers.append(make_punch(server, r, 2, job)))
        for rank in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    makers.sort(key=lambda maker: maker.rank)
    # Rank 0 is registered and listening (its maker even authenticates rank 1's connection)
    # but never asks for the link, so the keep/close decision, which is rank 0's, never comes.
    started = time.monotonic()
    try:
        with pytest.raises(CommTimeoutError) as caught:
            makers[1].link(0, time.monotonic() + 0.3)
        elapsed = time.monotonic() - started
        assert 0.3 <= elapsed < 1.5
        message = str(caught.value)
        assert "rank 1 could not punch a TCP link to rank 0" in message
        assert f"{LOOPBACK}:{makers[0].port}" in message
        assert "waiting for rank 0's keep/close decision" in message
    finally:
        for maker in makers:
            maker.close()


def test_registration_names_the_missing_ranks(server: Rendezvous) -> None:
    job = job_name("incomplete")
    started = time.monotonic()
    with pytest.raises(CommTimeoutError, match=r"missing rank\(s\) 1, 2") as caught:
        make_punch(server, 0, 3, job, deadline_s=0.5)
    assert time.monotonic() - started < 5
    assert "rank 0 of job" in str(caught.value)


def test_a_wrong_rendezvous_secret_is_a_clear_error(server: Rendezvous) -> None:
    wrong = Rendezvous(server.port, b"not-the-deployment-secret-0123456789")
    with pytest.raises(CommError, match="registration at the rendezvous server") as caught:
        make_punch(wrong, 0, 2, job_name("badsecret"), deadline_s=5)
    assert not isinstance(caught.value, CommTimeoutError)


def test_an_unreachable_rendezvous_server_is_a_clear_error() -> None:
    with pytest.raises(CommError, match="rendezvous server"):
        make_punch(Rendezvous(free_port(), SECRET), 0, 2, job_name("noserver"), deadline_s=2)
