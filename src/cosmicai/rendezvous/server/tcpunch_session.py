"""A TCPunch client on the server side (wire format in ``wire/tcpunch.py`` and
``docs/rendezvous-protocol.md`` §2).

The reference server's faults, fixed: each connection is served on its own (a silent client
blocks nobody); the name has a deadline; a waiter is dropped as soon as its socket closes or
its wait ends, so a newcomer is never paired with a client that has left; writing to a gone
peer is harmless (asyncio never raises SIGPIPE).

A TCPunch name has no length and no terminator. It is complete at 100 bytes, or when no byte
has arrived for ``tcpunch_name_settle`` after the last one: TCPunch clients send the name with
one ``send()``, so it nearly always arrives in one read, and the short settle time joins the
pieces when it does not.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from cosmicai.rendezvous.server.connection import Connection
from cosmicai.rendezvous.server.logs import log_event
from cosmicai.rendezvous.server.waiting import Refusal
from cosmicai.rendezvous.wire.tcpunch import MAX_NAME_BYTES, encode_record

_NAMING, _WAITING, _DONE = range(3)


class TCPunchSession:
    __slots__ = ("_buffer", "_phase", "_settle_timer", "_wait_timer", "conn", "name", "record")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.name = b""
        self.record = b""
        self._buffer = bytearray()
        self._phase = _NAMING
        self._settle_timer: asyncio.TimerHandle | None = None
        self._wait_timer: asyncio.TimerHandle | None = None

    @property
    def source(self) -> str:
        return self.conn.source

    def is_alive(self) -> bool:
        return self._phase == _WAITING and self.conn.is_alive()

    def data_received(self, data: bytes) -> None:
        if self._phase != _NAMING:
            # A TCPunch client sends nothing after its name: more bytes mean the name was cut
            # by the settle time or this is not a TCPunch client. Either way it must not pair.
            self._end()
            self.conn.protocol_error("bytes_after_name", f"{len(data)} bytes after the name")
            return
        buffer = self._buffer
        buffer += data
        if len(buffer) > MAX_NAME_BYTES:
            self._end()
            self.conn.protocol_error(
                "name_too_long", f"{len(buffer)} bytes, more than the {MAX_NAME_BYTES} allowed"
            )
        elif len(buffer) == MAX_NAME_BYTES:
            self._name_complete()
        else:
            if self._settle_timer is not None:
                self._settle_timer.cancel()
            state = self.conn.state
            self._settle_timer = state.loop.call_later(
                state.config.tcpunch_name_settle, self._name_complete
            )

    def _name_complete(self) -> None:
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        conn, state = self.conn, self.conn.state
        conn.hello_done()
        self.name = bytes(self._buffer)
        self._buffer = bytearray()
        try:
            self.record = encode_record(conn.peer)
        except ValueError:
            self._phase = _DONE
            conn.protocol_error("ipv6_client", f"TCPunch client from {conn.peer}")
            return
        conn.send(self.record)
        self._phase = _WAITING
        try:
            # Only TCPunchSessions wait on this board.
            partner = cast(TCPunchSession | None, state.tcpunch_board.offer(self.name, self))
        except Refusal as refusal:
            self._phase = _DONE
            state.metrics.inc("limit_refusals_total", limit="tcpunch_waiting")
            log_event(logging.INFO, "tcpunch_refused", peer=str(conn.peer), reason=refusal.message)
            conn.close()
            return
        if partner is None:
            self._wait_timer = state.loop.call_later(state.config.tcpunch_wait, self._wait_expired)
            return
        partner._matched(self)
        self._matched(partner)
        state.metrics.inc("pairings_total", protocol="tcpunch")
        log_event(
            logging.DEBUG,
            "paired",
            protocol="tcpunch",
            name=self.name.decode(errors="replace"),
            first=str(partner.conn.peer),
            second=str(conn.peer),
        )

    def _matched(self, partner: TCPunchSession) -> None:
        if self._wait_timer is not None:
            self._wait_timer.cancel()
            self._wait_timer = None
        self._phase = _DONE
        self.conn.send(partner.record)
        self.conn.close()

    def _wait_expired(self) -> None:
        self._wait_timer = None
        state = self.conn.state
        state.metrics.inc("timeouts_total", kind="tcpunch_wait")
        log_event(logging.INFO, "tcpunch_wait_expired", peer=str(self.conn.peer))
        self._end()
        # TCPunch cannot carry an error: the client sees the connection close instead of a
        # partner, rather than waiting forever.
        self.conn.close()

    def _end(self) -> None:
        for timer in (self._settle_timer, self._wait_timer):
            if timer is not None:
                timer.cancel()
        self._settle_timer = self._wait_timer = None
        if self._phase == _WAITING:
            self.conn.state.tcpunch_board.withdraw(self.name, self)
        self._phase = _DONE

    def hello_expired(self) -> None:
        # A half-named client gets no answer: TCPunch has no way to carry one.
        self._end()
        self.conn.abort()

    def connection_lost(self) -> None:
        self._end()

    def shutdown(self) -> None:
        self._end()
        self.conn.close()
