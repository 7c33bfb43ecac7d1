"""Admission bookkeeping: connection caps and the budget of unauthenticated connections."""

from __future__ import annotations

from cosmicai.rendezvous.server.admission import Admission


def admission(**limits: int) -> Admission[str]:
    defaults = {
        "max_connections": 100,
        "max_per_source": 100,
        "max_unauthenticated": 100,
        "max_unauthenticated_per_source": 100,
    }
    return Admission(**{**defaults, **limits})


def test_authenticated_connections_leave_the_unauthenticated_budget() -> None:
    gate = admission(max_unauthenticated=2)
    assert gate.admit("a", "10.0.0.1").refused is None
    assert gate.admit("b", "10.0.0.2").refused is None
    gate.authenticated("a")
    # One place freed in the budget: a third connection needs no eviction.
    verdict = gate.admit("c", "10.0.0.3")
    assert (verdict.refused, verdict.evicted) == (None, None)
    assert gate.unauthenticated == 2 and len(gate) == 3


def test_a_full_budget_evicts_the_oldest_of_the_heaviest_source_only_when_fair() -> None:
    # GIVEN a stranger with three unauthenticated connections and a worker with one
    gate = admission(max_unauthenticated=4)
    for conn in ("s1", "s2", "s3"):
        gate.admit(conn, "6.6.6.6")
    gate.admit("w1", "10.0.0.1")
    # WHEN the stranger opens a fourth THEN it is refused (it would hold more than anyone)
    assert gate.admit("s4", "6.6.6.6").refused == "unauthenticated"
    # WHEN another worker connects THEN it replaces the stranger's oldest connection
    verdict = gate.admit("w2", "10.0.0.2")
    assert (verdict.refused, verdict.evicted) == (None, "s1")
    assert gate.unauthenticated == 4
    # AND releasing the evicted connection later (its close arriving) changes nothing
    gate.release("s1")
    assert gate.unauthenticated == 4 and len(gate) == 4


def test_per_source_caps_and_release() -> None:
    gate = admission(max_per_source=2, max_unauthenticated_per_source=1)
    assert gate.admit("a", "10.0.0.1").refused is None
    assert gate.admit("b", "10.0.0.1").refused == "unauthenticated_per_address"
    gate.authenticated("a")
    assert gate.admit("b", "10.0.0.1").refused is None
    gate.authenticated("b")
    assert gate.admit("c", "10.0.0.1").refused == "connections_per_address"
    gate.release("a")
    assert gate.admit("c", "10.0.0.1").refused is None


def test_a_server_full_of_authenticated_clients_refuses_newcomers() -> None:
    gate = admission(max_connections=2)
    for conn in ("a", "b"):
        gate.admit(conn, conn)
        gate.authenticated(conn)
    assert gate.admit("c", "c").refused == "connections"
