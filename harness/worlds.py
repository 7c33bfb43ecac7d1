"""Worlds of ranks for the communicator tests and benchmarks: threads or forked processes,
real sockets."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cosmicai.comm import (
    Communicator,
    Endpoint,
    LinkMaker,
    StaticTcpLinks,
    StoreLinks,
    dumps,
    loads,
    loopback_listeners,
)
from cosmicai.comm.channel import Channel
from cosmicai.storage import Storage

KEY = bytes(range(32))
JOB = "job-test"
BUCKET = "cosmicai-test"

T = TypeVar("T")


def tcp_endpoints(
    size: int, *, unreachable: Sequence[int] = ()
) -> tuple[list[socket.socket], list[Endpoint]]:
    """Listening sockets on loopback, and the endpoints every rank is told.

    Ranks in ``unreachable`` are announced at a port that was bound and released, so
    connecting to them is refused at once (they still listen on their own socket).
    """
    listeners = loopback_listeners(size)
    endpoints = [Endpoint.from_sockaddr(s.getsockname()) for s in listeners]
    if unreachable:
        probe = loopback_listeners(1)[0]
        dead = Endpoint.from_sockaddr(probe.getsockname())
        probe.close()
        endpoints = [dead if rank in unreachable else ep for rank, ep in enumerate(endpoints)]
    return listeners, endpoints


def tcp_links(size: int, *, unreachable: Sequence[int] = ()) -> list[LinkMaker]:
    """Static TCP link makers on loopback."""
    listeners, endpoints = tcp_endpoints(size, unreachable=unreachable)
    return [
        StaticTcpLinks(rank, size, endpoints, key=KEY, job_id=JOB, listener=listeners[rank])
        for rank in range(size)
    ]


def store_links(size: int, storage: Storage, prefix: str = "comm/job-test/") -> list[LinkMaker]:
    return [
        StoreLinks(rank, storage, BUCKET, prefix, poll_initial_s=0.0005, poll_max_s=0.01)
        for rank in range(size)
    ]


class CountingLinks:
    """A link maker that counts the links it is asked for (to check links are reused)."""

    def __init__(self, inner: LinkMaker) -> None:
        self.inner = inner
        self.asked: list[int] = []

    @property
    def rank(self) -> int:
        return self.inner.rank

    def link(self, peer: int, deadline: float) -> Channel:
        self.asked.append(peer)
        return self.inner.link(peer, deadline)

    def close(self) -> None:
        self.inner.close()


@dataclass
class Outcome:
    """What one rank's body returned, or the error it raised."""

    rank: int
    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0


def run_threads(
    makers: Sequence[LinkMaker],
    body: Callable[[Communicator], T],
    *,
    deadline_s: float = 20.0,
) -> list[T]:
    """Run ``body`` on every rank in threads; returns the results, raising any rank's error."""
    outcomes = run_threads_outcomes(makers, body, deadline_s=deadline_s)
    errors = [o for o in outcomes if o.error is not None]
    if errors:
        raise AssertionError(
            "; ".join(f"rank {o.rank}: {type(o.error).__name__}: {o.error}" for o in errors)
        ) from errors[0].error
    return [o.value for o in outcomes]


def run_threads_outcomes(
    makers: Sequence[LinkMaker],
    body: Callable[[Communicator], Any],
    *,
    deadline_s: float = 20.0,
) -> list[Outcome]:
    size = len(makers)
    outcomes = [Outcome(rank) for rank in range(size)]

    def main(rank: int) -> None:
        comm = Communicator(rank, size, makers[rank], deadline_s=deadline_s)
        started = time.monotonic()
        try:
            outcomes[rank].value = body(comm)
        except BaseException as exc:
            outcomes[rank].error = exc
        finally:
            outcomes[rank].seconds = time.monotonic() - started
            comm.close()

    threads = [
        threading.Thread(target=main, args=(rank,), name=f"rank-{rank}") for rank in range(size)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=deadline_s * 3 + 10)
    hung = [thread.name for thread in threads if thread.is_alive()]
    assert not hung, f"ranks still running long after their deadline: {hung}"
    return outcomes


class TcpWorld:
    """Static TCP link makers on loopback for forked ranks.

    The listening sockets are made before the fork and the link makers in each child (threads
    do not survive a fork): call the world with a rank in that rank's child, and ``close()`` in
    the parent once the children run.
    """

    def __init__(self, size: int, *, key: bytes = KEY, job_id: str = JOB) -> None:
        self.size = size
        self.key = key
        self.job_id = job_id
        self.listeners, self.endpoints = tcp_endpoints(size)

    def __call__(self, rank: int) -> LinkMaker:
        for other, listener in enumerate(self.listeners):
            if other != rank:
                listener.close()
        return StaticTcpLinks(
            rank,
            self.size,
            self.endpoints,
            key=self.key,
            job_id=self.job_id,
            listener=self.listeners[rank],
        )

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()  # the parent's copies: the children hold their own


def run_forked(
    size: int,
    make_links: Callable[[int], LinkMaker],
    body: Callable[[Communicator], Any],
    workdir: Path,
    *,
    deadline_s: float = 20.0,
    wait_s: float | None = None,
) -> list[Outcome]:
    """Run ``body`` on every rank in a forked process, its link maker ``make_links(rank)``
    made in the child.

    Results come back through files encoded with the communicator's own serializer (no
    pickle); a rank that raised gets a RemoteError, one that died without writing its file a
    ProcessLookupError. Ranks still running ``wait_s`` seconds after the start (by default
    three deadlines and 20 s) are killed.
    """
    context = multiprocessing.get_context("fork")

    def child(rank: int) -> None:
        comm = Communicator(rank, size, make_links(rank), deadline_s=deadline_s)
        started = time.monotonic()
        try:
            record: dict[str, Any] = {"value": body(comm)}
        except BaseException as exc:
            record = {"error": type(exc).__name__, "message": str(exc)}
        record["seconds"] = time.monotonic() - started
        comm.close()
        (workdir / f"rank-{rank}.msg").write_bytes(dumps(record))

    processes = [context.Process(target=child, args=(rank,)) for rank in range(size)]
    for process in processes:
        process.start()
    if isinstance(make_links, TcpWorld):
        make_links.close()
    limit = time.monotonic() + (deadline_s * 3 + 20 if wait_s is None else wait_s)
    for process in processes:
        process.join(timeout=max(0.1, limit - time.monotonic()))
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGKILL)
            process.join()
    outcomes = []
    for rank in range(size):
        path = workdir / f"rank-{rank}.msg"
        if not path.exists():
            outcomes.append(Outcome(rank, error=ProcessLookupError(f"rank {rank} died")))
            continue
        record = loads(path.read_bytes())
        outcome = Outcome(rank, value=record.get("value"), seconds=record["seconds"])
        if "error" in record:
            outcome.error = RemoteError(record["error"], record["message"])
        outcomes.append(outcome)
    return outcomes


def run_processes(
    size: int,
    body: Callable[[Communicator], Any],
    workdir: Path,
    *,
    deadline_s: float = 20.0,
) -> list[Outcome]:
    """Run ``body`` on every rank in forked processes over real loopback TCP."""
    return run_forked(size, TcpWorld(size), body, workdir, deadline_s=deadline_s)


class RemoteError(Exception):
    """An exception raised in a child process, by class name and message."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message
