"""Proof that the namespace NATs behave like real ones, and the reference TCP hole punch.

Each check runs plain-socket agents (harness/netns/agents.py) inside the namespaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from typing import Any

import pytest

from harness.netns.topology import (
    BASE_PREFIX,
    NatSpec,
    NatTopology,
    TopologyError,
    TopologyFactory,
    list_netns,
    read_line,
    remove_leftovers,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]

AGENTS = ["-m", "harness.netns.agents"]


def _last_json(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, f"agent printed no result: {text!r}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _agent(topology: NatTopology, host: str, *args: str, timeout: float = 15.0) -> dict[str, Any]:
    done = topology.run(host, [*AGENTS, *args], timeout)
    assert done.returncode in (0, 1), f"agent on {host} crashed: {done.stderr}"
    return _last_json(done.stdout)


def _finish(process: subprocess.Popen[str], timeout: float = 15.0) -> dict[str, Any]:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode in (0, 1), f"agent crashed: {stderr}"
    return _last_json(stdout)


def _kind(topology: NatTopology) -> str:
    return topology.routers["nat1"].kind


def test_outbound_goes_through_the_nat(nat_topology: NatTopology) -> None:
    # Two public destinations from one local port, both held open at the same time.
    _, server = nat_topology.start_toy_server("server")
    _, other = nat_topology.start_toy_server("stranger")
    seen = _agent(
        nat_topology,
        "h1",
        "observe",
        "--server",
        f"{server[0]}:{server[1]}",
        "--server",
        f"{other[0]}:{other[1]}",
    )
    local_port = seen["local_port"]
    (ip1, port1), (ip2, port2) = seen["observed"]
    public = nat_topology.addresses["nat1"]
    # The public side sees the NAT's address, never the private one.
    assert ip1 == ip2 == public != nat_topology.addresses["h1"]
    if _kind(nat_topology) == "cone":
        # Plain masquerade keeps the port when it can: same public endpoint for every peer.
        assert port1 == port2 == local_port
    else:
        # `masquerade random`: a fresh random port (1024-65535) per connection, so what the
        # rendezvous server saw says nothing about the port a peer will see.
        assert port1 != port2
        assert local_port not in (port1, port2)


def test_cone_mapping_is_endpoint_independent_even_when_the_port_is_taken(
    cone_nat: NatTopology,
) -> None:
    # h1 holds local port P mapped to public P; h3 (same NAT) then uses the same local port.
    _, server = cone_nat.start_toy_server("server")
    _, other = cone_nat.start_toy_server("stranger")
    h1 = cone_nat.spawn(
        "h1", [*AGENTS, "expose", "--server", f"{server[0]}:{server[1]}", "--seconds", "2"]
    )
    held = json.loads(read_line(h1, 10))
    port = held["local_port"]
    assert held["observed"] == [cone_nat.addresses["nat1"], port]
    seen = _agent(
        cone_nat,
        "h3",
        "observe",
        "--local-port",
        str(port),
        "--server",
        f"{server[0]}:{server[1]}",
        "--server",
        f"{other[0]}:{other[1]}",
    )
    (_, port1), (_, port2) = seen["observed"]
    # The NAT had to pick another port for h3 ...
    assert port1 != port
    # ... and reuses that mapping for h3's next destination (conntrack's existing source map),
    # so the endpoint the rendezvous server reports is still the one peers must aim at.
    assert port2 == port1
    _finish(h1)


def test_unsolicited_connections_are_not_forwarded(nat_topology: NatTopology) -> None:
    topo = nat_topology
    _, server = topo.start_toy_server("server")
    # h1 holds a mapping to the server and listens on the very same local port.
    h1 = topo.spawn(
        "h1", [*AGENTS, "expose", "--server", f"{server[0]}:{server[1]}", "--seconds", "2.5"]
    )
    held = json.loads(read_line(h1, 10))
    public_ip, public_port = held["observed"]
    private = f"{topo.addresses['h1']}:{held['local_port']}"
    nat1 = topo.addresses["nat1"]
    # A public host may route to the private LAN directly: that must be dropped as well.
    topo.command("stranger", ["ip", "route", "add", str(topo.routers["nat1"].lan), "via", nat1])
    try:
        probes = {
            # A host h1 never talked to, at h1's public endpoint.
            "stranger->public": topo.spawn(
                "stranger", [*AGENTS, "probe", "--to", f"{public_ip}:{public_port}"]
            ),
            # The server h1 *is* connected to, but from another source port.
            "server->public": topo.spawn(
                "server", [*AGENTS, "probe", "--to", f"{public_ip}:{public_port}"]
            ),
            "stranger->private": topo.spawn("stranger", [*AGENTS, "probe", "--to", private]),
            # Control: the listener is reachable, from its own LAN.
            "h3->private": topo.spawn("h3", [*AGENTS, "probe", "--to", private]),
        }
        results = {name: _finish(process)["result"] for name, process in probes.items()}
    finally:
        topo.command("stranger", ["ip", "route", "del", str(topo.routers["nat1"].lan)])
    # The NAT drops silently (no RST), so from the outside it is a timeout.
    assert results == {
        "stranger->public": "timeout",
        "server->public": "timeout",
        "stranger->private": "timeout",
        "h3->private": "connected",
    }
    accepted = _finish(h1)["accepted"]
    assert [address for address, _ in accepted] == [topo.addresses["h3"]]


def test_no_hairpin_lan_peers_need_private_endpoints(cone_nat: NatTopology) -> None:
    _, server = cone_nat.start_toy_server("server")
    h1 = cone_nat.spawn(
        "h1", [*AGENTS, "expose", "--server", f"{server[0]}:{server[1]}", "--seconds", "1.5"]
    )
    held = json.loads(read_line(h1, 10))
    public_ip, public_port = held["observed"]
    # h3 behind the same NAT, aiming at h1's public endpoint: the router has no hairpin NAT,
    # answers from its own stack, where nothing listens.
    result = _agent(cone_nat, "h3", "probe", "--to", f"{public_ip}:{public_port}")
    assert result["result"] == "refused"
    _finish(h1)


def _punch_pair(
    topology: NatTopology, first: str, second: str, *, deadline: float, late: float = 0.0
) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Punch between two hosts through a fresh toy server; ``second`` starts ``late`` s later."""
    _, server = topology.start_toy_server("server")
    name = uuid.uuid4().hex[:12]
    argv = [
        *AGENTS,
        "punch",
        "--server",
        f"{server[0]}:{server[1]}",
        "--name",
        name,
        "--deadline",
        str(deadline),
    ]
    start = time.monotonic()
    one = topology.spawn(first, [*argv, "--message", f"hello from {first}"])
    two = topology.spawn(
        second, [*argv, "--message", f"hello from {second}", "--start-delay", str(late)]
    )
    a, b = _finish(one, deadline + 10), _finish(two, deadline + 10)
    return a, b, time.monotonic() - start


# The late runs: h1's first SYN dies at nat2 (no mapping there yet) but leaves nat1 open, so
# h2's SYN, when it comes, reaches h1's connecting socket.
@pytest.mark.parametrize("late", [0.0, 0.3, 1.2])
def test_hole_punch_succeeds_across_cone_nats(cone_nat: NatTopology, late: float) -> None:
    for _ in range(3 if late == 0 else 1):
        a, b, _wall = _punch_pair(cone_nat, "h1", "h2", deadline=5.0, late=late)
        assert a["ok"] and b["ok"], (a, b)
        assert a["received"] == "hello from h2" and b["received"] == "hello from h1"
        # Each side aimed at what the server observed for the other, and that was right.
        assert a["peer"] == b["public"] and b["peer"] == a["public"]
        assert a["public"] == [cone_nat.addresses["nat1"], a["local_port"]]
        # Up as soon as the late side sends its SYN (no waiting for a 1 s SYN retransmission).
        # The two sides read the peer record at slightly different moments (each process is
        # scheduled on its own), so the early side's wait may fall short of `late` by a little.
        assert late - 0.05 <= a["link_s"] < late + 0.3 and b["link_s"] < 0.3
        assert {a["via"], b["via"]} <= {"connect", "accept"}


@pytest.mark.parametrize("layout", ["symmetric", "mixed"])
def test_hole_punch_fails_within_its_deadline_across_symmetric_nats(
    layout: str, symmetric_nat: NatTopology, nat_topology_factory: TopologyFactory
) -> None:
    if layout == "symmetric":
        topology = symmetric_nat
    else:
        # One cone, one symmetric NAT: Linux's cone filters by exact peer endpoint too, so the
        # symmetric side's unpredictable port is dropped there as well.
        topology = nat_topology_factory(
            [NatSpec("nat1", "cone", ("h1",)), NatSpec("nat2", "symmetric", ("h2",))]
        )
    deadline = 2.0
    a, b, wall = _punch_pair(topology, "h1", "h2", deadline=deadline)
    assert not a["ok"] and not b["ok"], (a, b)
    assert a["reason"] == b["reason"] == "deadline"
    # Bounded: it gives up at its deadline, not at some TCP timeout.
    assert deadline <= a["elapsed_s"] < deadline + 0.5
    assert wall < deadline + 5


def test_close_removes_everything_and_a_failed_build_cleans_up(
    netns_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with NatTopology([NatSpec("nat1", "cone", ("h1",))], public_hosts=("server",)) as topology:
        prefix = topology.prefix
        assert {n for n in list_netns() if n.startswith(prefix)} == {
            f"{prefix}{name}" for name in ("internet", "server", "nat1", "h1")
        }
    assert not [n for n in list_netns() if n.startswith(prefix)]

    # A ruleset nft rejects, so the build fails halfway: nothing may stay behind.
    monkeypatch.setattr("harness.netns.topology._ruleset", lambda router: "this is not nft\n")
    broken = NatTopology([NatSpec("nat1", "cone", ("h1",))])
    with pytest.raises(TopologyError, match="nft"):
        broken.build()
    assert not [n for n in list_netns() if n.startswith(broken.prefix)]


def test_leftovers_of_a_crashed_run_are_removed(netns_environment: None) -> None:
    # A pid that certainly existed and is now gone stands in for the crashed run.
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert dead.pid != os.getpid()
    name = f"{BASE_PREFIX}{dead.pid}-internet"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        assert name in remove_leftovers()
        assert name not in list_netns()
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)
