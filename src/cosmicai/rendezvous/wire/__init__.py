"""The rendezvous wire: what both ends agree on, and nothing else.

``endpoint`` (the one endpoint type, with its parser), ``framing`` (preamble and frames of the
native protocol), ``messages`` (typed messages and error codes), ``auth`` (HMAC
authentication), ``tcpunch`` (TCPunch's records). Specified byte by byte in
``docs/rendezvous-protocol.md``. This layer imports nothing else of ``cosmicai.rendezvous``:
the clients and the server build on it.
"""

from __future__ import annotations

from cosmicai.rendezvous.wire.endpoint import Endpoint
from cosmicai.rendezvous.wire.messages import ErrorCode, PeerRecord

__all__ = ["Endpoint", "ErrorCode", "PeerRecord"]
