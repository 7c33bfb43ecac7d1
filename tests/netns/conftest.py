"""Fixtures for tests against real NATs built from network namespaces (see
harness/netns/README.md).

Everything skips, with the reason, when the machine cannot do it: not root, no
``ip netns`` (no CAP_NET_ADMIN, e.g. an unprivileged container), or nftables missing and not
installable.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from harness.netns.topology import (
    NatSpec,
    NatTopology,
    TopologyError,
    TopologyFactory,
    check_environment,
    two_nats,
)


def pytest_configure(config: pytest.Config) -> None:
    # Registered here because only this directory uses it; `-m "not netns"` leaves these out.
    config.addinivalue_line("markers", "netns: builds network namespaces (needs root)")


@pytest.fixture(scope="session")
def netns_environment() -> None:
    """Once per session: install nftables if missing, sweep crashed runs' namespaces, probe."""
    reason = check_environment()
    if reason is not None:
        pytest.skip(f"NAT tests skipped: {reason}")


@pytest.fixture(scope="session")
def nat_topology_factory(netns_environment: None) -> Iterator[TopologyFactory]:
    """Build any layout: ``factory([NatSpec("nat1", "cone", ("h1",)), ...])``.

    Session-scoped so that tests can share topologies; all of them are deleted at the end of
    the session, whatever happened to the tests.
    """
    built: list[NatTopology] = []

    def make(
        nats: Sequence[NatSpec], *, public_hosts: Sequence[str] = ("server", "stranger")
    ) -> NatTopology:
        topology = NatTopology(nats, public_hosts=public_hosts)
        built.append(topology)
        return topology.build()

    yield make
    errors = []
    for topology in built:
        try:
            topology.close()
        except TopologyError as exc:
            errors.append(str(exc))
    assert not errors, f"namespace cleanup failed: {errors}"


@pytest.fixture(scope="session")
def cone_nat(nat_topology_factory: TopologyFactory) -> NatTopology:
    """h1, h3 behind nat1 and h2 behind nat2, both plain masquerade; server and stranger public."""
    return nat_topology_factory(two_nats("cone"))


@pytest.fixture(scope="session")
def symmetric_nat(nat_topology_factory: TopologyFactory) -> NatTopology:
    """The same layout with ``masquerade random`` on both NATs."""
    return nat_topology_factory(two_nats("symmetric"))


@pytest.fixture(params=["cone", "symmetric"])
def nat_topology(request: pytest.FixtureRequest) -> NatTopology:
    """Runs the test once per NAT kind (the session topologies above); see ``.kind`` below."""
    topology: NatTopology = request.getfixturevalue(f"{request.param}_nat")
    return topology
