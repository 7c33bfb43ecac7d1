"""One accepted TCP connection: which protocol it speaks, its first deadline, its socket.

The first byte decides the protocol: zero starts the native preamble, anything else is the
first byte of a TCPunch pairing name. No waiting is needed beyond that byte, so TCPunch
clients are not slowed down by the disambiguation; a connection that sends nothing is closed
after ``hello_timeout``.

Each connection is admitted (or refused, or admitted in the place of a stranger's) by
``admission`` when it is accepted, counts as unauthenticated until its session calls
``authenticate``, and must finish its hello (a native client: its AUTH) by ``hello_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Protocol, cast

from cosmicai.rendezvous.server.logs import log_event
from cosmicai.rendezvous.server.state import ServerState
from cosmicai.rendezvous.wire.endpoint import Endpoint


class Session(Protocol):
    def data_received(self, data: bytes) -> None: ...

    def hello_expired(self) -> None:
        """``hello_timeout`` passed before the session finished its hello (or its AUTH)."""

    def connection_lost(self) -> None: ...

    def shutdown(self) -> None:
        """The server is stopping: say goodbye if the protocol can, and close."""


# A waiter whose host vanishes (no FIN, no RST) would otherwise be paired until its deadline.
# Set on the listening socket: accepted sockets inherit them (one syscall per server, not four
# per connection).
_KEEPALIVE = (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))


def enable_keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in _KEEPALIVE:
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


#: How long a finished connection waits for the client to close before it is aborted.
LINGER_SECONDS = 2.0


#: Makes the session for a connection's first byte, or refuses it (returns None, having
#: dropped the connection); the server supplies it, so this module knows no session class.
OpenSession = Callable[["Connection", int], Session | None]


class Connection(asyncio.Protocol):
    __slots__ = (
        "_hello_timer",
        "_open_session",
        "authenticated",
        "peer",
        "session",
        "state",
        "transport",
    )

    def __init__(self, state: ServerState, open_session: OpenSession) -> None:
        self.state = state
        self._open_session = open_session
        self.authenticated = False
        self.session: Session | None = None
        self._hello_timer: asyncio.TimerHandle | None = None

    @property
    def source(self) -> str:
        return self.peer.host

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        state = self.state
        state.metrics.inc("connections_total")
        self.peer = Endpoint.from_sockaddr(transport.get_extra_info("peername"))
        verdict = None if state.closing else state.admission.admit(self, self.peer.host)
        if verdict is None or verdict.refused is not None:
            state.metrics.inc("connections_rejected_total")
            if verdict is not None:
                state.metrics.inc("limit_refusals_total", limit=verdict.refused or "")
            self.transport.abort()
            return
        if verdict.evicted is not None:
            state.metrics.inc("limit_refusals_total", limit="unauthenticated_evicted")
            verdict.evicted.abort()
        state.connections.add(self)
        self._hello_timer = state.loop.call_later(state.config.hello_timeout, self._hello_expired)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None:
            session = self.session = self._open_session(self, data[0])
            if session is None:
                return
        session.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.hello_done()
        self.state.connections.discard(self)
        self.state.admission.release(self)
        if self.session is not None:
            self.session.connection_lost()

    def authenticate(self) -> None:
        """The client has proved itself (or needs not): its hello is over, and it leaves the
        budget of unauthenticated connections."""
        self.hello_done()
        if not self.authenticated:
            self.authenticated = True
            self.state.admission.authenticated(self)

    def hello_done(self) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None

    def _hello_expired(self) -> None:
        self._hello_timer = None
        self.state.metrics.inc("timeouts_total", kind="hello")
        log_event(logging.DEBUG, "hello_timeout", peer=str(self.peer))
        if self.session is not None:
            self.session.hello_expired()
        else:
            self.transport.abort()  # a silent client gets no answer

    def shutdown(self) -> None:
        """The server is stopping: let the session say goodbye, or just close."""
        if self.session is not None:
            self.session.shutdown()
        else:
            self.close()

    def abort(self) -> None:
        self.hello_done()
        self.state.connections.discard(self)
        self.state.admission.release(self)
        self.transport.abort()

    def is_alive(self) -> bool:
        return not self.transport.is_closing()

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(data)
        # A client that does not read would make the server hold its output without bound.
        if transport.get_write_buffer_size() > self.state.config.max_write_buffer + len(data):
            self.state.metrics.inc("limit_refusals_total", limit="write_buffer")
            transport.abort()

    def close(self) -> None:
        """Close once everything written has been sent."""
        self.transport.close()

    def finish(self) -> None:
        """Send everything written, then FIN, and close when the client does (or after a
        grace period). Closing at once would answer the client's unread bytes with a RST,
        which can destroy our last frame (an ERROR) before the client reads it."""
        transport = self.transport
        if transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:  # the client is already gone
            transport.abort()
            return
        self.state.loop.call_later(LINGER_SECONDS, transport.abort)

    def protocol_error(self, fault: str, detail: str) -> None:
        """Count and log a broken protocol, then drop the connection without a reply."""
        self.state.metrics.inc("protocol_errors_total", kind=fault)
        log_event(logging.DEBUG, "protocol_error", peer=str(self.peer), fault=fault, detail=detail)
        self.transport.abort()
