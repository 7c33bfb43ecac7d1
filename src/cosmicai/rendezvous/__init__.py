"""The rendezvous server and its client: workers find each other's public and private
endpoints here before punching holes through their NATs (DESIGN.md §6).

One asyncio server speaks TCPunch's protocol byte for byte (for FMI's C++ clients) and a
native, authenticated protocol with pairing by name and world registration
(``docs/rendezvous-protocol.md``).
"""

from __future__ import annotations

from cosmicai.rendezvous.client import (
    BlockingRendezvousClient,
    PairResult,
    RendezvousClient,
    WorldResult,
)
from cosmicai.rendezvous.config import ServerConfig
from cosmicai.rendezvous.endpoint import Endpoint
from cosmicai.rendezvous.messages import ErrorCode, PeerRecord
from cosmicai.rendezvous.server import RendezvousServer

__all__ = [
    "BlockingRendezvousClient",
    "Endpoint",
    "ErrorCode",
    "PairResult",
    "PeerRecord",
    "RendezvousClient",
    "RendezvousServer",
    "ServerConfig",
    "WorldResult",
]
