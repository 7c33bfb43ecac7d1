"""The communicator through real NATs (issue 4's NAT tests): hole-punched links, the object-store
fallback, and a rank killed mid-collective.

Every rank is a process inside a namespace host of the session topologies (h1 and h3 behind
nat1, h2 behind nat2, see README.md here); the rendezvous server runs on the public host
"server". The rank and server programs are this module's ``main`` (run as
``python -m tests.netns.test_comm_nat rank|serve ...``); they print one JSON object per line.

Rank placement, four ranks: 0 on h1, 1 on h2, 2 on h3 (h1's LAN), 3 on h2 again (same host as
rank 1). So the world has cross-NAT pairs (public endpoints), a same-LAN pair and a same-host
pair (private endpoints: the NATs do no hairpinning).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.netns.topology import NatTopology, read_line

pytestmark = pytest.mark.netns

SECRET = b"netns-comm-test-deployment-secret"
BUCKET = "comm"
HOSTS = ("h1", "h2", "h3", "h2")
#: Each rank program is started through `ip netns exec` and imports numpy: allow for it.
START_TIMEOUT = 30.0
MODULE = ["-m", "tests.netns.test_comm_nat"]


def operand(rank: int) -> np.ndarray:
    """Rank ``rank``'s allreduce input. The first component makes the order of the additions
    show: (1e16 + 1) + (-1e16 + 1) is 0.0 in float64, ((1e16 + 1) - 1e16) + 1 is 1.0."""
    return np.array(
        [(1e16, 1.0, -1e16, 1.0)[rank % 4], 0.1 * (rank + 1), 1.0 / (rank + 3), 10.0**-rank]
    )


def expected_sum(size: int) -> list[float]:
    """What the communicator's recursive doubling computes for 4 ranks, on every rank and over
    any channel: (x0 + x1) + (x2 + x3)."""
    assert size == 4
    x = [operand(rank) for rank in range(size)]
    result = (x[0] + x[1]) + (x[2] + x[3])
    # So "the same result" checks the expression tree, not just the value of a sum.
    assert result[0] != (((x[0] + x[1]) + x[2]) + x[3])[0]
    as_list: list[float] = result.tolist()
    return as_list


# -- the programs run inside the namespaces --------------------------------------------------


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _serve(address: str, port: int, health_port: int, lifetime: float) -> None:
    from dataclasses import replace

    from cosmicai.rendezvous.server import RendezvousServer
    from cosmicai.rendezvous.server.config import ServerConfig

    async def run() -> None:
        config = replace(
            ServerConfig(), host=address, port=port, health_port=health_port, secret=SECRET
        )
        async with RendezvousServer(config):
            _emit(event="ready", port=port)
            # Bounded: the server never outlives its test by much (the test also kills it).
            await asyncio.sleep(lifetime)

    asyncio.run(run())


def _wait_for_exit(timeout: float) -> None:
    """Until the test writes a line on stdin (or closes it), at most ``timeout`` seconds."""
    readable, _, _ = select.select([sys.stdin], [], [], timeout)
    if readable:
        sys.stdin.readline()


def _rank(args: argparse.Namespace) -> int:
    from cosmicai.comm import Communicator, FallbackLinks, StoreLinks, derive_job_key
    from cosmicai.comm.links import LinkMaker
    from cosmicai.comm.punch import PunchLinks, punch_links
    from cosmicai.exceptions import CommError
    from cosmicai.rendezvous.wire import Endpoint
    from cosmicai.storage import LocalStorage

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"rank {args.rank} %(name)s: %(message)s"
    )
    punch = punch_links(
        rank=args.rank,
        size=args.size,
        job_id=args.job,
        key=derive_job_key(SECRET, args.job),
        rendezvous=Endpoint.parse(args.server),
        rendezvous_secret=SECRET,
        deadline_s=20.0,
    )
    assert isinstance(punch, PunchLinks)
    _emit(
        event="registered",
        rank=args.rank,
        port=punch.port,
        public=None if punch.public is None else punch.public.address,
    )
    links: LinkMaker = punch
    fallback = None
    if args.store:
        store = StoreLinks(
            args.rank, LocalStorage(args.store), BUCKET, f"comm/{args.job}/", poll_max_s=0.01
        )
        links = fallback = FallbackLinks(punch, store, link_deadline_s=args.link_deadline)
    comm = Communicator(args.rank, args.size, links, deadline_s=args.deadline)
    try:
        total = np.empty(4)
        comm.Allreduce(operand(args.rank), total)
        if args.all_pairs:
            # Every pair, in ascending pair order on every rank (no waiting cycle).
            for peer in range(args.size):
                if peer != args.rank:
                    comm.send(args.rank, peer, tag=1)
            for peer in range(args.size):
                if peer != args.rank:
                    assert comm.recv(peer, tag=1) == peer
        stats = comm.link_stats()
        _emit(
            event="result",
            rank=args.rank,
            allreduce=total.tolist(),
            kinds=stats.by_kind,
            peers={str(p): kind for p, kind in stats.peers.items()},
            setup={str(p): seconds for p, seconds in stats.setup_seconds.items()},
            routes={str(p): o.route for p, o in punch.outcomes.items()},
            reasons={str(p): why for p, why in (fallback.reasons if fallback else {}).items()},
            refusals=punch.refusals,
        )
        if args.victim:
            _emit(event="ready")
            time.sleep(30)  # killed by the test long before
            return 0
        if args.survivor:
            _emit(event="entering")
            started = time.monotonic()
            try:
                comm.Allreduce(operand(args.rank), total)
            except CommError as exc:
                _emit(
                    event="failed",
                    error=type(exc).__name__,
                    message=str(exc),
                    elapsed=time.monotonic() - started,
                )
                return 0
            _emit(event="finished", elapsed=time.monotonic() - started)
            return 0
        _wait_for_exit(30)
    finally:
        comm.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.netns.test_comm_nat")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("--address", required=True)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--health-port", type=int, required=True)
    serve.add_argument("--lifetime", type=float, default=60.0)
    rank = commands.add_parser("rank")
    rank.add_argument("--server", required=True)
    rank.add_argument("--rank", type=int, required=True)
    rank.add_argument("--size", type=int, required=True)
    rank.add_argument("--job", required=True)
    rank.add_argument("--store", default="")
    rank.add_argument("--link-deadline", type=float, default=1.0)
    rank.add_argument("--deadline", type=float, default=15.0)
    rank.add_argument("--all-pairs", action="store_true")
    rank.add_argument("--victim", action="store_true")
    rank.add_argument("--survivor", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "serve":
        _serve(args.address, args.port, args.health_port, args.lifetime)
        return 0
    return _rank(args)


# -- the tests -------------------------------------------------------------------------------


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)  # by pid: a process this test started
    with contextlib.suppress(subprocess.TimeoutExpired, OSError, ValueError):
        process.communicate(timeout=5)


@contextlib.contextmanager
def rendezvous_server(topology: NatTopology) -> Iterator[str]:
    """The real rendezvous server on the public host "server"; yields its ip:port."""
    address = topology.addresses["server"]
    port = topology.allocate_port()
    process = topology.spawn(
        "server",
        [
            *MODULE,
            "serve",
            "--address",
            address,
            "--port",
            str(port),
            "--health-port",
            str(topology.allocate_port()),
        ],
    )
    try:
        line = read_line(process, START_TIMEOUT)
        assert json.loads(line)["event"] == "ready", line
        yield f"{address}:{port}"
    finally:
        _stop(process)


class Ranks:
    """Rank processes of one world, and their JSON events."""

    def __init__(
        self,
        topology: NatTopology,
        hosts: Sequence[str],
        *args: str,
        extra: dict[int, Sequence[str]] | None = None,
    ) -> None:
        self.topology = topology
        self.hosts = list(hosts)
        job = f"nat-{uuid.uuid4().hex[:12]}"
        extra = extra or {}
        self.processes = [
            topology.spawn(
                host,
                [
                    *MODULE,
                    "rank",
                    "--rank",
                    str(r),
                    "--size",
                    str(len(hosts)),
                    "--job",
                    job,
                    *args,
                    *extra.get(r, ()),
                ],
            )
            for r, host in enumerate(hosts)
        ]

    def event(self, rank: int, name: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """The next event ``name`` of ``rank`` (earlier events of other names are skipped)."""
        limit = time.monotonic() + timeout
        process = self.processes[rank]
        while True:
            try:
                line = read_line(process, max(limit - time.monotonic(), 0.1))
            except (TimeoutError, EOFError) as exc:
                raise AssertionError(f"rank {rank}: no {name!r} event: {exc}") from exc
            event: dict[str, Any] = json.loads(line)
            if event["event"] == name:
                return event

    def release(self) -> None:
        for process in self.processes:
            if process.poll() is None and process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.write("exit\n")
                    process.stdin.flush()

    def close(self) -> None:
        self.release()
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            _stop(process)


def same_network(topology: NatTopology, a: str, b: str) -> bool:
    return topology.hosts[a].router == topology.hosts[b].router


def probe(topology: NatTopology, source: str, target: Sequence[Any]) -> str:
    done = topology.run(
        source,
        ["-m", "tests.netns.agents", "probe", "--to", f"{target[0]}:{target[1]}", "--timeout", "1"],
        15,
    )
    assert done.returncode == 0, done.stderr
    result: str = json.loads(done.stdout.splitlines()[-1])["result"]
    return result


def test_cone_nat_every_pair_punches_direct(cone_nat: NatTopology) -> None:
    with rendezvous_server(cone_nat) as server:
        ranks = Ranks(cone_nat, HOSTS, "--server", server, "--all-pairs")
        try:
            registered = [ranks.event(r, "registered") for r in range(len(HOSTS))]
            results = [ranks.event(r, "result") for r in range(len(HOSTS))]
            # A public host the ranks never punched toward cannot reach a rank's public
            # endpoint (the NAT drops it), although the rank still listens on that port.
            unsolicited = {
                rank: probe(cone_nat, "stranger", registered[rank]["public"]) for rank in (0, 1)
            }
        finally:
            ranks.close()

    size = len(HOSTS)
    for rank, result in enumerate(results):
        # THEN every pair has a direct TCP link...
        assert result["kinds"] == {"tcp": size - 1}, result
        assert set(result["peers"]) == {str(p) for p in range(size) if p != rank}
        # ...through the NATs between networks, over the private endpoints within one
        for peer, route in result["routes"].items():
            same = same_network(cone_nat, HOSTS[rank], HOSTS[int(peer)])
            assert route == ("private" if same else "public"), (rank, peer, route)
        # ...and the allreduce is exact
        assert result["allreduce"] == expected_sum(size)
        assert result["refusals"] == []
    # The public endpoint is the NAT's, the port the rank's own (plain masquerade keeps it).
    assert registered[0]["public"][0] == cone_nat.addresses["nat1"]
    assert registered[1]["public"][0] == cone_nat.addresses["nat2"]
    assert set(unsolicited.values()) <= {"timeout", "refused"}, unsolicited


def test_symmetric_nat_falls_back_to_the_store(symmetric_nat: NatTopology, tmp_path: Path) -> None:
    link_deadline = 1.0
    with rendezvous_server(symmetric_nat) as server:
        ranks = Ranks(
            symmetric_nat,
            HOSTS,
            "--server",
            server,
            "--store",
            str(tmp_path),
            "--link-deadline",
            str(link_deadline),
        )
        try:
            results = [ranks.event(r, "result") for r in range(len(HOSTS))]
        finally:
            ranks.close()

    size = len(HOSTS)
    # Recursive doubling over 4 ranks links 0-1 and 2-3 (across the NATs), then 0-2 (one LAN)
    # and 1-3 (one host).
    expected_kinds = {(0, 1): "store", (2, 3): "store", (0, 2): "tcp", (1, 3): "tcp"}
    for rank, result in enumerate(results):
        # THEN the same allreduce gives the same result as through the cone NATs
        assert result["allreduce"] == expected_sum(size)
        for peer_text, kind in result["peers"].items():
            peer = int(peer_text)
            assert kind == expected_kinds[(min(rank, peer), max(rank, peer))], (rank, peer)
        assert result["kinds"] == {"store": 1, "tcp": 1}
    # The lower rank of each cross-NAT pair gave up punching at its link deadline, and said why
    for lower, higher in ((0, 1), (2, 3)):
        reason = results[lower]["reasons"][str(higher)]
        assert f"could not punch a TCP link to rank {higher}" in reason
        setup = results[lower]["setup"][str(higher)]
        assert link_deadline <= setup < link_deadline + 2.0, setup


def test_a_rank_killed_mid_collective_is_an_error_not_a_hang(cone_nat: NatTopology) -> None:
    deadline = 8.0
    hosts = ("h1", "h2", "h3")
    victim = 2
    survivors = [rank for rank in range(len(hosts)) if rank != victim]
    with rendezvous_server(cone_nat) as server:
        ranks = Ranks(
            cone_nat,
            hosts,
            "--server",
            server,
            "--deadline",
            str(deadline),
            extra={r: ["--victim" if r == victim else "--survivor"] for r in range(len(hosts))},
        )
        try:
            # GIVEN a world whose links are up (a first allreduce went through on every rank)
            for rank in range(len(hosts)):
                ranks.event(rank, "result")
            ranks.event(victim, "ready")
            for rank in survivors:
                ranks.event(rank, "entering")
            # WHEN the victim is killed while the others wait for it inside the next allreduce
            time.sleep(0.3)
            killed = time.monotonic()
            os.kill(ranks.processes[victim].pid, signal.SIGKILL)
            outcomes = {r: ranks.event(r, "failed", timeout=deadline + 10) for r in survivors}
            waited = time.monotonic() - killed
        finally:
            ranks.close()

    # THEN every survivor fails with a communicator error, within the deadline
    assert waited < deadline
    for outcome in outcomes.values():
        assert outcome["error"] in {"PeerLostError", "CommError", "CommTimeoutError"}, outcome
        assert outcome["elapsed"] < deadline, outcome
    # The kernel closed the dead rank's sockets, so its link partner (rank 1, across both NATs)
    # knew at once, and rank 0, waiting on rank 1, got rank 1's abort instead of its deadline.
    assert outcomes[1]["error"] == "PeerLostError"
    assert "rank 2" in outcomes[1]["message"]
    assert outcomes[0]["error"] == "PeerLostError"
    assert "rank 1 aborted" in outcomes[0]["message"]
    assert max(outcome["elapsed"] for outcome in outcomes.values()) < deadline / 2


if __name__ == "__main__":
    sys.exit(main())
