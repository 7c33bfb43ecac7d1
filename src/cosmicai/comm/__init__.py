"""Direct worker-to-worker communication: a communicator with mpi4py's names over links that
are direct TCP connections or, where those cannot be made, an object store.

Layers, one module each: ``serial`` (safe object encoding), ``frames`` (wire frames and their
reassembly), ``handshake`` (mutual link authentication), ``channel`` / ``store`` (the TCP and
object-store channels), ``links`` (link makers: the seam where links are made), ``topology``
and ``ops`` (the algorithms' shapes and reduction operations), ``communicator``; ``settings``
(the one reader of the ``COSMICAI_COMM_*`` environment), ``punch`` (hole-punched links, built
on the blocking rendezvous client) and ``session`` (a rank's communicator for a run).
See ``docs/communicator.md``.
"""

from __future__ import annotations

from cosmicai.comm.channel import ANY_TAG, Channel, TcpChannel
from cosmicai.comm.communicator import Communicator, LinkStats
from cosmicai.comm.handshake import authenticate_link, derive_job_key
from cosmicai.comm.links import (
    FallbackLinks,
    LinkMaker,
    StaticTcpLinks,
    StoreLinks,
    loopback_listeners,
)
from cosmicai.comm.ops import MAX, MIN, PROD, SUM, Op
from cosmicai.comm.serial import dumps, loads
from cosmicai.comm.settings import CommSettings
from cosmicai.comm.store import StoreChannel
from cosmicai.rendezvous.wire.endpoint import Endpoint

__all__ = [
    "ANY_TAG",
    "MAX",
    "MIN",
    "PROD",
    "SUM",
    "Channel",
    "CommSettings",
    "Communicator",
    "Endpoint",
    "FallbackLinks",
    "LinkMaker",
    "LinkStats",
    "Op",
    "StaticTcpLinks",
    "StoreChannel",
    "StoreLinks",
    "TcpChannel",
    "authenticate_link",
    "derive_job_key",
    "dumps",
    "loads",
    "loopback_listeners",
]
