"""The rendezvous server: one asyncio listener for TCPunch and the native protocol, and the
health port.

Modules, bottom up: ``config``, ``logs``, ``metrics``, ``admission`` (connection caps and the
unauthenticated budget), ``waiting`` (waiting limits and pairing by name), ``worlds`` (world
registration), ``state`` (what every connection shares),
``connection`` (one accepted socket), ``native_session`` and ``tcpunch_session`` (the two
protocols' server sides), ``health`` (``/healthz``, ``/metrics``) and ``server``, which
composes them (it hands ``Connection`` the function that opens a session).
"""

from __future__ import annotations

from cosmicai.rendezvous.server.config import ServerConfig
from cosmicai.rendezvous.server.server import RendezvousServer

__all__ = ["RendezvousServer", "ServerConfig"]
