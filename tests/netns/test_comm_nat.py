"""The communicator through real NATs (issue 4's NAT tests): hole-punched links, the object-store
fallback, and a rank killed mid-collective.

Every rank is a process inside a namespace host of the session topologies (h1 and h3 behind
nat1, h2 behind nat2, see harness/netns/README.md); the rendezvous server runs on the public host
"server". The rank and server programs are ``harness.netns.agents rank|rendezvous``; they
print one JSON object per line.

Rank placement, four ranks: 0 on h1, 1 on h2, 2 on h3 (h1's LAN), 3 on h2 again (same host as
rank 1). So the world has cross-NAT pairs (public endpoints), a same-LAN pair and a same-host
pair (private endpoints: the NATs do no hairpinning).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.netns.agents import operand
from harness.netns.topology import NatTopology, read_line

pytestmark = [pytest.mark.netns, pytest.mark.slow]

HOSTS = ("h1", "h2", "h3", "h2")
#: Each rank program is started through `ip netns exec` and imports numpy: allow for it.
START_TIMEOUT = 30.0
AGENTS = ["-m", "harness.netns.agents"]


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
    process, endpoint = topology.start_rendezvous(lifetime=60.0)
    try:
        yield endpoint
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
                    *AGENTS,
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
        [*AGENTS, "probe", "--to", f"{target[0]}:{target[1]}", "--timeout", "1"],
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
