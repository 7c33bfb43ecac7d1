"""Failures end in a clear error within the deadline, never in a hang."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from cosmicai.comm import Communicator
from cosmicai.exceptions import CommError, CommProtocolError, CommTimeoutError, PeerLostError
from cosmicai.storage import Storage
from harness.worlds import (
    Outcome,
    run_processes,
    run_threads,
    run_threads_outcomes,
    store_links,
    tcp_links,
)


def errors_of(outcomes: list[Outcome], *, skip: int) -> list[BaseException]:
    errors = [o.error for o in outcomes if o.rank != skip]
    assert all(error is not None for error in errors), outcomes
    return [error for error in errors if error is not None]


@pytest.mark.slow
def test_a_killed_process_fails_the_others_within_the_deadline(tmp_path: Path) -> None:
    # GIVEN 4 rank processes looping over allreduce, and rank 2 killed in the middle
    def body(comm: Communicator) -> int:
        for iteration in range(200):
            if comm.rank == 2 and iteration == 20:
                os.kill(os.getpid(), signal.SIGKILL)
            comm.allreduce(np.arange(4.0))
        return iteration

    outcomes = run_processes(4, body, tmp_path, deadline_s=5.0)
    # THEN the killed rank left nothing, and every other rank got a communicator error
    assert isinstance(outcomes[2].error, ProcessLookupError)
    for outcome in outcomes:
        if outcome.rank != 2:
            assert outcome.error is not None, outcome
            name = getattr(outcome.error, "name", "")
            assert name in ("PeerLostError", "CommTimeoutError", "CommError"), outcome.error
            assert "allreduce" in str(outcome.error)
    # AND the partner of rank 2 learned it from the socket, naming rank 2
    partner_error = str(outcomes[3].error)
    assert "PeerLostError" in partner_error and "rank 2" in partner_error


@pytest.mark.parametrize("transport", ["tcp", "store"])
def test_a_rank_that_closes_mid_collective_fails_its_peers_at_once(
    transport: str, local_storage: Storage
) -> None:
    # GIVEN ranks that have linked (one barrier), then rank 1 aborting instead of reducing
    size = 4
    makers = tcp_links(size) if transport == "tcp" else store_links(size, local_storage)

    def body(comm: Communicator) -> object:
        comm.barrier()
        if comm.rank == 1:
            comm._abort(CommError("stopped by the test"))
            return None
        return comm.allreduce(comm.rank)

    outcomes = run_threads_outcomes(makers, body, deadline_s=30.0)
    # THEN every other rank fails with a lost peer, long before the 30 s deadline
    errors = errors_of(outcomes, skip=1)
    assert all(isinstance(error, PeerLostError) for error in errors), errors
    assert any("stopped by the test" in str(error) for error in errors)
    assert all(outcome.seconds < 30.0 for outcome in outcomes)


def test_a_silent_rank_times_out_naming_the_peer_and_the_operation() -> None:
    # GIVEN rank 2 of 3 never joining the allreduce (it just waits, links open)
    def body(comm: Communicator) -> object:
        if comm.rank == 2:
            time.sleep(1.5)
            return None
        return comm.allreduce(1.0)

    outcomes = run_threads_outcomes(tcp_links(3), body, deadline_s=0.5)
    errors = errors_of(outcomes, skip=2)
    # THEN rank 1, which waits on rank 2, times out naming both
    timeout = outcomes[1].error
    assert isinstance(timeout, CommTimeoutError), errors
    assert "allreduce on rank 1" in str(timeout) and "rank 2 did not answer" in str(timeout)
    assert timeout.peer == 2 and timeout.operation == "allreduce"
    # AND rank 0, waiting on rank 1, fails too (its own timeout or rank 1's abort, whichever
    # comes first)
    assert isinstance(outcomes[0].error, CommError)


def test_a_failed_communicator_refuses_further_work() -> None:
    def body(comm: Communicator) -> str:
        if comm.rank == 0:
            with pytest.raises(CommTimeoutError):
                comm.recv(1, tag=5)
            with pytest.raises(CommError, match="unusable after an earlier failure"):
                comm.barrier()
        else:
            time.sleep(0.6)  # stays linked but silent past rank 0's deadline
        return "done"

    assert run_threads(tcp_links(2), body, deadline_s=0.3) == ["done", "done"]


def test_mismatched_calls_name_what_went_wrong() -> None:
    def body(comm: Communicator) -> str:
        if comm.rank == 0:
            comm.Send(np.zeros(3), 1, tag=1)
            comm.send("an object", 1, tag=2)
            return "sent"
        with pytest.raises(CommProtocolError, match=r"24 bytes with tag 1; the receive buffer"):
            comm.Recv(np.zeros(4), 0, tag=1)
        return "checked"

    assert run_threads(tcp_links(2), body) == ["sent", "checked"]

    def kinds(comm: Communicator) -> str:
        if comm.rank == 0:
            comm.send("an object", 1, tag=2)
            return "sent"
        with pytest.raises(CommProtocolError, match=r"a Python object .* expected a numpy buffer"):
            comm.Recv(np.zeros(4), 0, tag=2)
        return "checked"

    assert run_threads(tcp_links(2), kinds) == ["sent", "checked"]


def test_an_unsupported_object_is_refused_before_anything_is_sent() -> None:
    def body(comm: Communicator) -> object:
        if comm.rank == 0:
            with pytest.raises(TypeError, match=r"builtins\.set"):
                comm.send({1, 2}, 1)
            with pytest.raises(TypeError, match=r"builtins\.set"):
                comm.bcast({1, 2})
        # The communicator is still fine: nothing was half sent.
        return comm.bcast("fine")

    assert run_threads(tcp_links(2), body) == ["fine", "fine"]


def test_bad_arguments_are_refused_with_their_names() -> None:
    makers = tcp_links(2)
    try:
        with pytest.raises(ValueError, match="rank 2 is outside"):
            Communicator(2, 2, makers[0])
        with pytest.raises(ValueError, match="acts for rank 0, not 1"):
            Communicator(1, 2, makers[0])
        comm = Communicator(0, 2, makers[0], deadline_s=1)
        with pytest.raises(ValueError, match="dest 5 is not a rank"):
            comm.send(1, 5)
        with pytest.raises(ValueError, match="tag -3"):
            comm.send(1, 1, tag=-3)
        with pytest.raises(ValueError, match="C-contiguous"):
            comm.Send(np.zeros((4, 4))[:, 1], 1)
        with pytest.raises(TypeError, match="numpy array"):
            comm.Send([1, 2], 1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="recvbuf holds 3 elements"):
            comm.Allreduce(np.zeros(4), np.zeros(3))
        with pytest.raises(ValueError, match="list of 2 items"):
            comm.scatter([1, 2, 3])
        with pytest.raises(CommError, match="no message from this rank to itself"):
            comm.recv(0)
    finally:
        for maker in makers:
            maker.close()
