"""Bookkeeping of waiting entries: pairing by name, limits, dead waiters."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cosmicai.rendezvous.server.waiting import PairingBoard, Refusal, WaitingLimits
from cosmicai.rendezvous.wire.messages import ErrorCode


@dataclass(eq=False)
class FakeWaiter:
    source: str = "198.51.100.1"
    alive: bool = True

    def is_alive(self) -> bool:
        return self.alive


def test_second_arrival_takes_the_waiter() -> None:
    limits = WaitingLimits(10, 10)
    board: PairingBoard[str, FakeWaiter] = PairingBoard(limits)
    first, second = FakeWaiter(), FakeWaiter()
    assert board.offer("n", first) is None
    assert limits.total == 1
    assert board.offer("n", second) is first
    assert limits.total == 0 and len(board) == 0


def test_a_dead_waiter_is_never_handed_out() -> None:
    # GIVEN a waiter whose socket is closing but whose close was not yet processed
    dropped: list[int] = []
    limits = WaitingLimits(10, 10)
    board: PairingBoard[str, FakeWaiter] = PairingBoard(limits, lambda: dropped.append(1))
    dead = FakeWaiter()
    board.offer("n", dead)
    dead.alive = False
    # WHEN a newcomer offers the same name
    newcomer = FakeWaiter()
    # THEN it waits instead of being paired with the dead one
    assert board.offer("n", newcomer) is None
    assert dropped == [1]
    assert limits.total == 1
    # AND the dead one's late withdrawal does not remove the newcomer
    assert board.withdraw("n", dead) is False
    assert len(board) == 1


def test_limit_per_source_address() -> None:
    limits = WaitingLimits(10, 2)
    board: PairingBoard[str, FakeWaiter] = PairingBoard(limits)
    board.offer("a", FakeWaiter())
    board.offer("b", FakeWaiter())
    with pytest.raises(Refusal, match=r"198\.51\.100\.1 already has 2 waiting") as refused:
        board.offer("c", FakeWaiter())
    assert refused.value.code is ErrorCode.LIMIT_EXCEEDED
    # another address still may wait
    assert board.offer("c", FakeWaiter(source="198.51.100.2")) is None


def test_limit_in_all() -> None:
    limits = WaitingLimits(1, 5)
    board: PairingBoard[str, FakeWaiter] = PairingBoard(limits)
    board.offer("a", FakeWaiter())
    with pytest.raises(Refusal, match="already holds 1 waiting entries"):
        board.offer("b", FakeWaiter(source="198.51.100.9"))


def test_drain_releases_everything() -> None:
    limits = WaitingLimits(10, 10)
    board: PairingBoard[str, FakeWaiter] = PairingBoard(limits)
    board.offer("a", FakeWaiter())
    board.offer("b", FakeWaiter())
    assert len(board.drain()) == 2
    assert limits.total == 0 and limits.waiting_from("198.51.100.1") == 0
