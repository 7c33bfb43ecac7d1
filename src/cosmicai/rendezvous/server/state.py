"""What every connection of one server shares: settings, counters and who is waiting."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from cosmicai.rendezvous.server.admission import Admission
from cosmicai.rendezvous.server.config import ServerConfig
from cosmicai.rendezvous.server.metrics import Metrics
from cosmicai.rendezvous.server.waiting import PairingBoard, Waiter, WaitingLimits
from cosmicai.rendezvous.server.worlds import WorldRegistry
from cosmicai.rendezvous.wire.auth import Authenticator


class OpenConnection(Protocol):
    """What the server does with an open connection: stop it politely, or drop it (at
    shutdown, or to make room: see ``admission``)."""

    def shutdown(self) -> None: ...

    def abort(self) -> None: ...


@dataclass(eq=False)
class ServerState:
    config: ServerConfig
    loop: asyncio.AbstractEventLoop
    metrics: Metrics
    #: Waiting entries of authenticated clients (native pairs, world ranks) ...
    limits: WaitingLimits
    #: ... and of TCPunch clients, apart, so these can never take the others' room.
    tcpunch_limits: WaitingLimits
    authenticator: Authenticator | None
    worlds: WorldRegistry
    #: Separate namespaces: an unauthenticated TCPunch client must never pair with a native one.
    #: Only one kind of session waits on each board (each session module relies on it).
    tcpunch_board: PairingBoard[bytes, Waiter] = field(init=False)
    native_board: PairingBoard[str, Waiter] = field(init=False)
    connections: set[OpenConnection] = field(default_factory=set)
    closing: bool = False
    admission: Admission[OpenConnection] = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        self.admission = Admission(
            max_connections=config.max_connections,
            max_per_source=config.max_connections_per_address,
            max_unauthenticated=config.max_unauthenticated,
            max_unauthenticated_per_source=config.max_unauthenticated_per_address,
        )
        metrics = self.metrics
        self.tcpunch_board = PairingBoard(
            self.tcpunch_limits, lambda: metrics.inc("dead_waiters_dropped_total", kind="tcpunch")
        )
        self.native_board = PairingBoard(
            self.limits, lambda: metrics.inc("dead_waiters_dropped_total", kind="native")
        )

    @classmethod
    def create(
        cls, config: ServerConfig, loop: asyncio.AbstractEventLoop, metrics: Metrics
    ) -> ServerState:
        limits = WaitingLimits(config.max_waiting, config.max_waiting_per_address)
        tcpunch_limits = WaitingLimits(
            config.max_tcpunch_waiting, config.max_tcpunch_waiting_per_address
        )
        authenticator = (
            None
            if config.secret is None
            else Authenticator(
                config.secret, window=config.auth_window, max_nonces=config.max_nonces
            )
        )
        worlds = WorldRegistry(
            loop,
            limits,
            metrics,
            max_world_size=config.max_world_size,
            max_deadline=config.max_world_deadline,
        )
        return cls(config, loop, metrics, limits, tcpunch_limits, authenticator, worlds)

    @property
    def waiting(self) -> int:
        """Waiting entries of both kinds."""
        return self.limits.total + self.tcpunch_limits.total
