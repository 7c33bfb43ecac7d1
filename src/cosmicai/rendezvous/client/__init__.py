"""Clients of the rendezvous server: the native protocol, asyncio (``RendezvousClient``) and
blocking (``BlockingRendezvousClient``), and a TCPunch client for smoke tests
(``tcpunch_pair``). They import only ``cosmicai.rendezvous.wire``: a worker that makes direct
links loads no server code.
"""

from __future__ import annotations

from cosmicai.rendezvous.client.native import (
    DEADLINE_MARGIN,
    BlockingRendezvousClient,
    PairResult,
    RendezvousClient,
    WorldResult,
    raise_error,
)
from cosmicai.rendezvous.client.tcpunch import tcpunch_pair

__all__ = [
    "DEADLINE_MARGIN",
    "BlockingRendezvousClient",
    "PairResult",
    "RendezvousClient",
    "WorldResult",
    "raise_error",
    "tcpunch_pair",
]
