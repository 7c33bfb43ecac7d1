"""Every collective, for world sizes 1..9 and 16, over real loopback TCP and the object store,
checked against values computed the plain way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cosmicai.comm import MAX, MIN, PROD, Communicator, FallbackLinks, LinkMaker
from cosmicai.storage import Storage
from harness.worlds import (
    run_processes,
    run_threads,
    store_links,
    tcp_links,
)


def concat(left: str, right: str) -> str:
    """Associative, not commutative: any combination out of rank order shows."""
    return f"{left},{right}"


def roots(size: int) -> dict[str, int]:
    # A different root per collective, so rotated trees get exercised.
    return {
        "bcast": size - 1,
        "reduce": size // 2,
        "gather": size // 3,
        "scatter": 1 % size,
        "Bcast": (size + 1) // 2 % size,
        "Reduce": size - 1,
        "Gather": (2 * size) // 3 % size,
    }


def every_collective(comm: Communicator) -> dict[str, Any]:
    rank, size = comm.rank, comm.size
    root = roots(size)
    out: dict[str, Any] = {}
    message = ("root", rank, [1.5, None], b"x", {"k": (1, 2)})
    out["bcast"] = comm.bcast(message if rank == root["bcast"] else None, root=root["bcast"])
    out["sum"] = comm.allreduce(rank + 1)
    out["prod"] = comm.allreduce(rank + 1, op=PROD)
    out["max"] = comm.allreduce(-((rank - 2) ** 2), op=MAX)
    out["min"] = comm.allreduce((rank - 2) ** 2, op=MIN)
    out["concat"] = comm.allreduce(str(rank), op=concat)
    out["array_sum"] = comm.allreduce(np.full(3, rank, dtype=np.int64))
    out["reduce"] = comm.reduce(str(rank), op=concat, root=root["reduce"])
    out["gather"] = comm.gather((rank, f"r{rank}"), root=root["gather"])
    items = [{"item": i} for i in range(size)] if rank == root["scatter"] else None
    out["scatter"] = comm.scatter(items, root=root["scatter"])
    out["allgather"] = comm.allgather(rank * 10)
    out["scan"] = comm.scan(rank + 1)
    out["scan_concat"] = comm.scan(str(rank), op=concat)
    comm.barrier()
    comm.send((rank, "ring"), (rank + 1) % size, tag=7)
    out["ring"] = comm.recv((rank - 1) % size, tag=7)

    mine = np.arange(5, dtype=np.float64) + rank
    total = np.empty(5)
    comm.Allreduce(mine, total)
    out["Allreduce"] = total
    largest = np.empty(5, dtype=np.int32)
    comm.Allreduce(mine.astype(np.int32), largest, op=MAX)
    out["Allreduce_max"] = largest
    smallest = np.empty(5) if rank == root["Reduce"] else None
    comm.Reduce(mine, smallest, op=MIN, root=root["Reduce"])
    out["Reduce"] = smallest
    gathered = np.empty((size, 5)) if rank == root["Gather"] else None
    comm.Gather(mine, gathered, root=root["Gather"])
    out["Gather"] = gathered
    broadcast = np.arange(7.0) * 3 if rank == root["Bcast"] else np.zeros(7)
    comm.Bcast(broadcast, root=root["Bcast"])
    out["Bcast"] = broadcast
    comm.Send(np.full(4, rank, dtype=np.int16), (rank + 1) % size, tag=3)
    received = np.empty(4, dtype=np.int16)
    comm.Recv(received, (rank - 1) % size, tag=3)
    out["Recv"] = received
    comm.Barrier()
    return out


def check(results: list[dict[str, Any]]) -> None:
    size = len(results)
    root = roots(size)
    names = ",".join(str(r) for r in range(size))
    for rank, out in enumerate(results):
        bcast_root = root["bcast"]
        assert out["bcast"] == ("root", bcast_root, [1.5, None], b"x", {"k": (1, 2)})
        assert out["sum"] == size * (size + 1) // 2
        assert out["prod"] == int(np.prod(np.arange(1, size + 1, dtype=object)))
        assert out["max"] == max(-((r - 2) ** 2) for r in range(size))
        assert out["min"] == min((r - 2) ** 2 for r in range(size))
        assert out["concat"] == names
        np.testing.assert_array_equal(out["array_sum"], np.full(3, size * (size - 1) // 2))
        assert out["reduce"] == (names if rank == root["reduce"] else None)
        expected_gather = [(r, f"r{r}") for r in range(size)]
        assert out["gather"] == (expected_gather if rank == root["gather"] else None)
        assert out["scatter"] == {"item": rank}
        assert out["allgather"] == [r * 10 for r in range(size)]
        assert out["scan"] == (rank + 1) * (rank + 2) // 2
        assert out["scan_concat"] == ",".join(str(r) for r in range(rank + 1))
        assert out["ring"] == ((rank - 1) % size, "ring")

        stacked = np.arange(5, dtype=np.float64) + np.arange(size)[:, None]
        np.testing.assert_array_equal(out["Allreduce"], stacked.sum(axis=0))
        np.testing.assert_array_equal(out["Allreduce_max"], stacked.astype(np.int32).max(axis=0))
        if rank == root["Reduce"]:
            np.testing.assert_array_equal(out["Reduce"], stacked.min(axis=0))
        else:
            assert out["Reduce"] is None
        if rank == root["Gather"]:
            np.testing.assert_array_equal(out["Gather"], stacked)
        else:
            assert out["Gather"] is None
        np.testing.assert_array_equal(out["Bcast"], np.arange(7.0) * 3)
        np.testing.assert_array_equal(out["Recv"], np.full(4, (rank - 1) % size))


@pytest.mark.parametrize("size", [*range(1, 10), 16])
def test_every_collective_over_loopback_tcp(size: int) -> None:
    # GIVEN a world of `size` ranks linked by real loopback TCP
    # WHEN every collective runs
    results = run_threads(tcp_links(size), every_collective)
    # THEN each gives the plainly computed answer on every rank
    check(results)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7, 8, 9])
def test_every_collective_over_the_local_object_store(size: int, local_storage: Storage) -> None:
    results = run_threads(store_links(size, local_storage), every_collective)
    check(results)
    # Every frame was deleted once read.
    assert list(local_storage.list("cosmicai-test", "comm/")) == []


def test_every_collective_over_s3(s3_storage: Storage) -> None:
    # GIVEN a small world whose links all go through (moto) S3
    results = run_threads(store_links(3, s3_storage), every_collective)
    check(results)
    assert list(s3_storage.list("cosmicai-test", "comm/")) == []


@pytest.mark.slow
def test_every_collective_in_16_processes(tmp_path: Path) -> None:
    # GIVEN 16 real processes, as the ranks of a local run are
    outcomes = run_processes(16, every_collective, tmp_path)
    errors = [(o.rank, o.error) for o in outcomes if o.error is not None]
    assert not errors
    check([o.value for o in outcomes])


def float_results(comm: Communicator) -> dict[str, Any]:
    """Sums of awkward floats: any change of combination order changes the bits."""
    rng = np.random.default_rng(1000 + comm.rank)
    values = rng.standard_normal(64) * 10.0 ** rng.integers(-8, 8, 64)
    buffer_sum = np.empty_like(values)
    comm.Allreduce(values, buffer_sum)
    reduced = np.empty_like(values) if comm.rank == 0 else None
    comm.Reduce(values, reduced)
    return {
        "allreduce": comm.allreduce(float(values[0])),
        "allreduce_array": comm.allreduce(values),
        "reduce": comm.reduce(float(values[0]), root=comm.size - 1),
        "Allreduce": buffer_sum,
        "Reduce": reduced,
        "links": comm.link_stats().by_kind,
    }


def mixed_links(size: int, storage: Storage, unreachable: tuple[int, ...]) -> list[LinkMaker]:
    primaries = tcp_links(size, unreachable=unreachable)
    fallbacks = store_links(size, storage, prefix="comm/mixed/")
    return [
        FallbackLinks(primary, fallback, link_deadline_s=0.5)
        for primary, fallback in zip(primaries, fallbacks, strict=True)
    ]


def test_float_results_are_identical_on_every_rank_and_over_every_channel(
    local_storage: Storage,
) -> None:
    # GIVEN the same operands, reduced over TCP, over the store, and over a mix of both
    size = 7
    runs = {
        "tcp": run_threads(tcp_links(size), float_results),
        "store": run_threads(store_links(size, local_storage), float_results),
        "mixed": run_threads(mixed_links(size, local_storage, (2, 5)), float_results),
    }
    # THEN the mixed world really used both kinds of link
    kinds: dict[str, int] = {}
    for result in runs["mixed"]:
        for kind, count in result["links"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    assert kinds.get("tcp", 0) > 0 and kinds.get("store", 0) > 0
    # AND every rank of every run holds bit-for-bit the same results
    reference = runs["tcp"][0]
    for name, results in runs.items():
        for rank, result in enumerate(results):
            assert result["allreduce"] == reference["allreduce"], (name, rank)
            assert result["allreduce_array"].tobytes() == reference["allreduce_array"].tobytes()
            assert result["Allreduce"].tobytes() == reference["Allreduce"].tobytes()
        assert results[size - 1]["reduce"] == reference["allreduce"]
        assert results[0]["Reduce"].tobytes() == reference["Allreduce"].tobytes()
    # AND the sum is the plain one, up to rounding
    operands = [np.random.default_rng(1000 + r) for r in range(size)]
    plain = sum(
        (g.standard_normal(64) * 10.0 ** g.integers(-8, 8, 64) for g in operands),
        start=np.zeros(64),
    )
    np.testing.assert_allclose(reference["Allreduce"], plain, rtol=1e-12, atol=1e-6)


def test_mixed_links_give_the_plain_results(local_storage: Storage) -> None:
    # GIVEN ranks 0 and 3 announced at a dead port: links that would connect to them fall back
    makers = mixed_links(6, local_storage, (0, 3))
    results = run_threads(makers, every_collective)
    check(results)
    choices = [maker.choices for maker in makers if isinstance(maker, FallbackLinks)]
    # Lower ranks connect to higher ones, so only links *to* rank 3 from ranks 0..2 fall back
    # (nobody connects to rank 0).
    for rank, chosen in enumerate(choices):
        for peer, kind in chosen.items():
            expected = "store" if max(rank, peer) == 3 else "tcp"
            assert kind == expected, (rank, peer, kind)
