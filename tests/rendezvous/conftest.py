"""Fixtures of the rendezvous tests: the event loop the server runs on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from harness.rendezvous import LOOP_FACTORY


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "uvloop: also run this async test under uvloop")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # The container serves with uvloop, whose transports differ from asyncio's in details the
    # server relies on (half-close, inherited socket options, write buffers, signal-free
    # shutdown): the tests marked `uvloop` run once on each loop.
    if metafunc.definition.get_closest_marker("uvloop") is not None:
        metafunc.parametrize("event_loop_kind", ["asyncio", "uvloop"], indirect=True)


@pytest.fixture(autouse=True)
def event_loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Which event loop ``async_test`` runs this test on: asyncio's unless parametrized."""
    kind: str = getattr(request, "param", "asyncio")
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if kind == "uvloop":
        uvloop = pytest.importorskip(
            "uvloop", reason="uvloop is not installed (cosmicai[rendezvous])"
        )
        factory = uvloop.new_event_loop
    LOOP_FACTORY[0] = factory
    try:
        yield kind
    finally:
        LOOP_FACTORY[0] = None
