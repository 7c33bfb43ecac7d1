"""The rendezvous server: one asyncio listener for both protocols, plus the health port.

Use it as an async context manager (or ``start`` / ``close``)::

    async with RendezvousServer(ServerConfig(port=0, health_port=0)) as server:
        print(server.port, server.health_port)
        await server.wait_closed()
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

from cosmicai.rendezvous.server.config import ServerConfig
from cosmicai.rendezvous.server.connection import Connection, Session, enable_keepalive
from cosmicai.rendezvous.server.health import HealthServer
from cosmicai.rendezvous.server.logs import log_event
from cosmicai.rendezvous.server.metrics import Metrics
from cosmicai.rendezvous.server.native_session import NativeSession
from cosmicai.rendezvous.server.state import ServerState
from cosmicai.rendezvous.server.tcpunch_session import TCPunchSession


def open_session(conn: Connection, first_byte: int) -> Session | None:
    """The protocol a connection's first byte chose: zero starts the native preamble, anything
    else is the first byte of a TCPunch pairing name."""
    state = conn.state
    if first_byte == 0:
        state.metrics.inc("sessions_total", protocol="native")
        return NativeSession(conn)
    if state.config.tcpunch:
        state.metrics.inc("sessions_total", protocol="tcpunch")
        return TCPunchSession(conn)
    conn.protocol_error("tcpunch_disabled", "TCPunch client while TCPunch is off")
    return None


class RendezvousServer:
    def __init__(self, config: ServerConfig, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = Metrics() if metrics is None else metrics
        self._state: ServerState | None = None
        self._server: asyncio.Server | None = None
        self._health: HealthServer | None = None
        self._closed = asyncio.Event()

    @property
    def state(self) -> ServerState:
        assert self._state is not None, "the rendezvous server is not started"
        return self._state

    @property
    def port(self) -> int:
        assert self._server is not None, "the rendezvous server is not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def health_port(self) -> int:
        assert self._health is not None, "the rendezvous server is not started"
        return self._health.port

    @property
    def health_host(self) -> str:
        """The address the health port is bound to."""
        assert self._health is not None, "the rendezvous server is not started"
        return self._health.host

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        state = self._state = ServerState.create(config, loop, self.metrics)
        self._server = await loop.create_server(
            lambda: Connection(state, open_session),
            config.host,
            config.port,
            backlog=config.backlog,
            reuse_address=True,
        )
        for sock in self._server.sockets:
            enable_keepalive(sock)
        self._health = HealthServer(
            self.metrics, self._status, config.health_host, config.health_port
        )
        try:
            await self._health.start()
        except BaseException:
            self._server.close()
            raise
        metrics = self.metrics
        metrics.gauge("connections_open", "Connections open now.", lambda: len(state.connections))
        metrics.gauge("waiting", "Waiting entries (pairs and world ranks).", lambda: state.waiting)
        metrics.gauge(
            "tcpunch_waiting",
            "TCPunch clients waiting for a partner.",
            lambda: len(state.tcpunch_board),
        )
        metrics.gauge(
            "native_waiting",
            "Native clients waiting for a partner.",
            lambda: len(state.native_board),
        )
        metrics.gauge(
            "unauthenticated_open",
            "Connections open and not yet authenticated (TCPunch ones included).",
            lambda: state.admission.unauthenticated,
        )
        metrics.gauge("worlds_open", "Worlds still filling.", lambda: len(state.worlds))
        metrics.gauge(
            "world_ranks_waiting",
            "Ranks registered in open worlds.",
            lambda: state.worlds.registered,
        )
        log_event(
            logging.INFO,
            "listening",
            host=config.host,
            port=self.port,
            health_host=config.health_host,
            health_port=self.health_port,
            tcpunch=config.tcpunch,
            auth=config.secret is not None,
            max_connections=config.max_connections,
            event_loop=type(loop).__module__.split(".")[0],
        )

    def _status(self) -> dict[str, Any]:
        state = self._state
        return {
            "status": "shutting_down" if state is None or state.closing else "ok",
            "tcpunch": self.config.tcpunch,
            "auth": self.config.secret is not None,
        }

    async def close(self) -> None:
        """Stop accepting, tell every waiting client, close every connection."""
        state, server = self._state, self._server
        if state is None or server is None or state.closing:
            await self._closed.wait()
            return
        state.closing = True
        server.close()
        waiting = state.waiting
        state.worlds.close("the rendezvous server is shutting down")
        for conn in list(state.connections):
            conn.shutdown()
        loop = state.loop
        deadline = loop.time() + self.config.shutdown_grace
        while state.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(state.connections):
            conn.abort()
        await asyncio.sleep(0)  # let the aborts run connection_lost
        await server.wait_closed()
        if self._health is not None:
            await self._health.close()
        log_event(
            logging.INFO,
            "stopped",
            waiting_at_shutdown=waiting,
            pairings=self.metrics.value("pairings_total"),
            worlds_completed=self.metrics.value("worlds_completed_total"),
        )
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> RendezvousServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
