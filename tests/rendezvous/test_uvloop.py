"""The same server under uvloop, which the container uses: its transports differ from
asyncio's in the details the server relies on (half-close, inherited socket options,
write buffers, signal-free shutdown)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable

import pytest

from tests.rendezvous import test_native_server as native
from tests.rendezvous import test_tcpunch_server as tcpunch

uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (cosmicai[rendezvous])")

pytestmark = pytest.mark.timeout(30)

CASES: list[Callable[[], None]] = [
    tcpunch.test_two_clients_get_own_record_then_peer_record_then_eof,
    tcpunch.test_accepted_sockets_keep_alive_so_vanished_hosts_are_noticed,
    tcpunch.test_a_waiter_that_left_is_never_paired,
    tcpunch.test_partners_resetting_while_others_pair_do_not_hurt_the_server,
    native.test_preamble_auth_and_request_split_into_single_bytes,
    native.test_oversized_frame_is_refused_from_its_header,
    native.test_replayed_auth_is_refused_on_another_connection,
    native.test_world_completes_and_every_rank_gets_every_record,
    native.test_partial_world_is_an_error_to_every_registered_rank,
    native.test_shutdown_tells_waiting_clients,
]


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_under_uvloop(case: Callable[[], None]) -> None:
    scenario = inspect.unwrap(case)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
