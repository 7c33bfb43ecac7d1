"""Links: made lazily for the edges an algorithm uses, reused, counted, logged; fallback."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from cosmicai.comm import Communicator, FallbackLinks, LinkMaker, StoreLinks
from cosmicai.comm.channel import Channel
from cosmicai.comm.topology import Fold, binomial_children, binomial_parent
from cosmicai.exceptions import CommError, CommTimeoutError
from cosmicai.storage import Storage
from harness.worlds import BUCKET, CountingLinks, run_threads, store_links, tcp_links


def recursive_doubling_peers(rank: int, size: int) -> set[int]:
    fold = Fold.of(size)
    partner = fold.partner(rank)
    peers = {partner} if partner is not None else set()
    virtual = fold.virtual(rank)
    if virtual is not None:
        mask = 1
        while mask < fold.pof2:
            peers.add(fold.real(virtual ^ mask))
            mask <<= 1
    return peers


def tree_peers(rank: int, size: int) -> set[int]:
    parent = binomial_parent(rank)
    return set(binomial_children(rank, size)) | ({parent} if parent is not None else set())


@pytest.mark.parametrize("size", [5, 8])
def test_links_are_made_once_per_edge_the_algorithms_use(size: int) -> None:
    # GIVEN link makers that count what they are asked for
    makers = [CountingLinks(maker) for maker in tcp_links(size)]

    def body(comm: Communicator) -> tuple[dict[int, str], int]:
        # WHEN recursive-doubling collectives run many times
        for _ in range(5):
            comm.allreduce(comm.rank)
            comm.barrier()
            comm.allgather("x")
            comm.Allreduce(np.ones(3), np.empty(3))
        stats = comm.link_stats()
        return stats.peers, stats.links

    results = run_threads(makers, body)
    for rank, (peers, links) in enumerate(results):
        # THEN each rank linked exactly to its recursive-doubling peers, each link made once
        expected = recursive_doubling_peers(rank, size)
        assert set(peers) == expected
        assert links == len(expected)
        assert sorted(makers[rank].asked) == sorted(expected)
        assert set(peers.values()) == {"tcp"}


def test_tree_collectives_reuse_their_edges_too() -> None:
    size = 7
    makers = [CountingLinks(maker) for maker in tcp_links(size)]

    def body(comm: Communicator) -> int:
        for _ in range(4):
            comm.bcast("x")
            comm.gather(1)
            comm.scatter(list(range(size)) if comm.rank == 0 else None)
            comm.Bcast(np.zeros(2))
        return comm.link_stats().links

    results = run_threads(makers, body)
    for rank in range(size):
        assert sorted(makers[rank].asked) == sorted(tree_peers(rank, size))
        assert results[rank] == len(tree_peers(rank, size))


def test_every_link_is_logged_with_its_channel(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cosmicai.comm")
    run_threads(tcp_links(2), lambda comm: comm.barrier())
    lines = [r.getMessage() for r in caplog.records if "linked to rank" in r.getMessage()]
    prefixes = sorted(line.split(" in ")[0] for line in lines)
    assert prefixes == ["rank 0 linked to rank 1 over tcp", "rank 1 linked to rank 0 over tcp"]


def test_link_stats_count_channels_by_kind(local_storage: Storage) -> None:
    def body(comm: Communicator) -> dict[str, int]:
        comm.allreduce(1)
        return comm.link_stats().by_kind

    assert run_threads(store_links(4, local_storage), body) == [{"store": 2}] * 4


class FailingLinks:
    """A primary that can never make a link, failing at once."""

    def __init__(self, rank: int) -> None:
        self._rank = rank

    @property
    def rank(self) -> int:
        return self._rank

    def link(self, peer: int, deadline: float) -> Channel:
        raise CommError(f"no route to rank {peer}", peer=peer)

    def close(self) -> None:
        pass


def test_fallback_takes_over_when_the_primary_fails(local_storage: Storage) -> None:
    # GIVEN a primary that fails every link at once
    size = 3
    makers: list[LinkMaker] = [
        FallbackLinks(FailingLinks(rank), store, link_deadline_s=1.0)
        for rank, store in enumerate(store_links(size, local_storage))
    ]
    # WHEN the ranks reduce
    results = run_threads(makers, lambda comm: comm.allreduce(comm.rank + 1))
    # THEN they reduce through the store, and say why
    assert results == [6, 6, 6]
    for maker in makers:
        assert isinstance(maker, FallbackLinks)
        assert set(maker.choices.values()) == {"store"}
        assert all("no route to rank" in reason for reason in maker.reasons.values())


def test_fallback_keeps_working_direct_links(local_storage: Storage) -> None:
    makers = [
        FallbackLinks(tcp, store, link_deadline_s=5.0)
        for tcp, store in zip(tcp_links(4), store_links(4, local_storage), strict=True)
    ]
    assert run_threads(makers, lambda comm: comm.allgather(comm.rank)) == [[0, 1, 2, 3]] * 4
    for maker in makers:
        assert set(maker.choices.values()) == {"tcp"} and not maker.reasons
    # The direct path never touched the store.
    assert list(local_storage.list(BUCKET, "")) == []


def test_a_follower_whose_leader_never_decides_times_out(local_storage: Storage) -> None:
    # GIVEN rank 1 waiting for rank 0's verdict on their link, and rank 0 absent
    follower = FallbackLinks(
        FailingLinks(1), StoreLinks(1, local_storage, BUCKET, "comm/"), link_deadline_s=0.1
    )
    # THEN it gives up at the deadline, naming the peer
    with pytest.raises(CommTimeoutError, match="rank 0 sent no verdict") as caught:
        follower.link(0, time.monotonic() + 0.3)
    assert caught.value.peer == 0
