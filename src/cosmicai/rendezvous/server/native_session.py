"""A native-protocol client on the server side (``docs/rendezvous-protocol.md``).

States: PREAMBLE until the 5-byte preamble is in; then READY for requests; PENDING while a
PAIR or REGISTER waits for its partner or world (only LEAVE is allowed then); CLOSED after an
ERROR, which is always the server's last frame on a connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

from cosmicai.exceptions import RendezvousProtocolError
from cosmicai.rendezvous.server.connection import Connection
from cosmicai.rendezvous.server.logs import log_event
from cosmicai.rendezvous.server.waiting import Refusal
from cosmicai.rendezvous.wire.endpoint import Endpoint
from cosmicai.rendezvous.wire.framing import (
    MAGIC,
    PREAMBLE,
    PREAMBLE_SIZE,
    PROTOCOL_VERSION,
    FrameDecoder,
    FrameTooLargeError,
)
from cosmicai.rendezvous.wire.messages import (
    Accepted,
    Auth,
    AuthOk,
    Error,
    ErrorCode,
    Leave,
    Left,
    Pair,
    Peer,
    Register,
    UnknownMessageTypeError,
    decode,
    encode,
)

_PREAMBLE, _READY, _PENDING_PAIR, _PENDING_WORLD, _CLOSED = range(5)

_AUTH_REASONS = {
    ErrorCode.AUTH_REQUIRED: "required",
    ErrorCode.AUTH_BAD_MAC: "bad_mac",
    ErrorCode.AUTH_EXPIRED: "expired",
    ErrorCode.AUTH_REPLAYED: "replayed",
}
_AUTH_MESSAGES = {
    ErrorCode.AUTH_BAD_MAC: "authentication failed: the MAC does not match this deployment's "
    "secret",
    ErrorCode.AUTH_EXPIRED: "authentication failed: the timestamp is more than {window:g} s "
    "from the server's clock",
    ErrorCode.AUTH_REPLAYED: "authentication failed: this nonce was already used (replay)",
    ErrorCode.LIMIT_EXCEEDED: "the server remembers too many recent nonces; retry later",
}
_PROTOCOL_FAULTS = {
    ErrorCode.MALFORMED_MESSAGE: "malformed_message",
    ErrorCode.FRAME_TOO_LARGE: "frame_too_large",
    ErrorCode.UNKNOWN_MESSAGE_TYPE: "unknown_message_type",
    ErrorCode.UNSUPPORTED_VERSION: "unsupported_version",
    ErrorCode.UNEXPECTED_MESSAGE: "unexpected_message",
    ErrorCode.INVALID_REQUEST: "invalid_request",
}


class NativeSession:
    __slots__ = (
        "_decoder",
        "_idle_timer",
        "_last_activity",
        "_preamble",
        "_status",
        "_wait_timer",
        "authenticated",
        "conn",
        "job_id",
        "pair_name",
        "private",
        "rank",
    )

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._status = _PREAMBLE
        self._preamble = b""
        self._decoder = FrameDecoder(conn.state.config.max_frame_bytes)
        self.authenticated = conn.state.authenticator is None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._wait_timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self.pair_name = ""
        self.job_id = ""
        self.rank = 0
        self.private: Endpoint | None = None

    @property
    def source(self) -> str:
        return self.conn.source

    def is_alive(self) -> bool:
        return self._status in (_PENDING_PAIR, _PENDING_WORLD) and self.conn.is_alive()

    # -- bytes in -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._status == _CLOSED:
            return  # lingering after an ERROR: the client's last bytes are read and dropped
        if self._status == _PREAMBLE:
            missing = PREAMBLE_SIZE - len(self._preamble)
            self._preamble += data[:missing]
            data = data[missing:]
            seen = self._preamble[: len(MAGIC)]
            if seen != MAGIC[: len(seen)]:
                # Not ours and not TCPunch (a zero first byte): no reply, it may not parse one.
                self.conn.protocol_error("bad_magic", f"preamble {self._preamble.hex()}")
                self._status = _CLOSED
                return
            if len(self._preamble) < PREAMBLE_SIZE:
                return
            self.conn.send(PREAMBLE)
            version = self._preamble[-1]
            if version != PROTOCOL_VERSION:
                self._fail(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"protocol version {version} is not supported; this server speaks "
                    f"version {PROTOCOL_VERSION}",
                )
                return
            if self.authenticated:
                self.conn.authenticate()  # no secret on this server: the preamble suffices
            self._status = _READY
            self._touch()
            if not data:
                return
        try:
            frames = self._decoder.feed(data)
        except FrameTooLargeError as exc:
            self._fail(ErrorCode.FRAME_TOO_LARGE, str(exc))
            return
        except RendezvousProtocolError as exc:
            self._fail(ErrorCode.MALFORMED_MESSAGE, str(exc))
            return
        for message_type, payload in frames:
            self._handle(message_type, payload)
            if self._status == _CLOSED:
                return

    def _handle(self, message_type: int, payload: bytes) -> None:
        self._last_activity = self.conn.state.loop.time()
        try:
            message = decode(message_type, payload)
        except UnknownMessageTypeError as exc:
            self._fail(ErrorCode.UNKNOWN_MESSAGE_TYPE, str(exc))
            return
        except RendezvousProtocolError as exc:
            self._fail(ErrorCode.MALFORMED_MESSAGE, str(exc))
            return
        if not self.authenticated and not isinstance(message, Auth):
            # Nothing but AUTH before AUTH: a stranger may not keep a connection alive.
            self._fail(
                ErrorCode.AUTH_REQUIRED,
                f"this server requires AUTH before any request, not "
                f"{type(message).__name__.upper()}",
            )
            return
        match message:
            case Auth():
                self._auth(message)
            case Leave():
                self._leave()
            case Pair() | Register():
                if self._status != _READY:
                    self._fail(
                        ErrorCode.UNEXPECTED_MESSAGE,
                        f"{type(message).__name__.upper()} while a request is pending "
                        "(send LEAVE first)",
                    )
                elif isinstance(message, Pair):
                    self._pair(message)
                else:
                    self._register(message)
            case _:
                self._fail(
                    ErrorCode.UNEXPECTED_MESSAGE,
                    f"{type(message).__name__.upper()} is sent by servers, not clients",
                )

    # -- requests -------------------------------------------------------------------------

    def _auth(self, message: Auth) -> None:
        state = self.conn.state
        if state.authenticator is None:
            # Auth is off: accept the AUTH so one client works against either kind of server.
            self.authenticated = True
            self.conn.send(encode(AuthOk(int(time.time() * 1000))))
            return
        if self.authenticated:
            self._fail(ErrorCode.UNEXPECTED_MESSAGE, "a second AUTH on one connection")
            return
        verdict = state.authenticator.check(message)
        if verdict is not None:
            text = _AUTH_MESSAGES[verdict].format(window=state.authenticator.window)
            self._fail(verdict, text)
            return
        self.authenticated = True
        self.conn.authenticate()
        self.conn.send(encode(AuthOk(int(time.time() * 1000))))

    def _pair(self, message: Pair) -> None:
        state = self.conn.state
        max_wait = state.config.max_pair_wait
        wait = min(message.wait_ms / 1000, max_wait) if message.wait_ms else max_wait
        try:
            # Only NativeSessions wait on this board.
            partner = cast(NativeSession | None, state.native_board.offer(message.name, self))
        except Refusal as refusal:
            self._fail(refusal.code, refusal.message)
            return
        self.pair_name = message.name
        self.private = message.private
        self._status = _PENDING_PAIR
        self.conn.send(encode(Accepted(self.conn.peer, int(wait * 1000))))
        if partner is None:
            self._wait_timer = state.loop.call_later(wait, self._pair_expired, wait)
            return
        partner._paired(self)
        self._paired(partner)
        state.metrics.inc("pairings_total", protocol="native")
        log_event(
            logging.DEBUG,
            "paired",
            protocol="native",
            name=message.name,
            first=str(partner.conn.peer),
            second=str(self.conn.peer),
        )

    def _paired(self, partner: NativeSession) -> None:
        self._cancel_wait()
        self._status = _READY
        self._touch()
        self.conn.send(encode(Peer(partner.conn.peer, partner.private)))

    def _pair_expired(self, wait: float) -> None:
        self._wait_timer = None
        self.conn.state.metrics.inc("timeouts_total", kind="pair")
        self._fail(
            ErrorCode.PAIR_TIMEOUT,
            f"no partner for pairing name {self.pair_name!r} within {wait:g} s",
        )

    def _register(self, message: Register) -> None:
        state = self.conn.state
        max_deadline = state.config.max_world_deadline
        deadline = (
            min(message.deadline_ms / 1000, max_deadline) if message.deadline_ms else max_deadline
        )
        try:
            remaining = state.worlds.join(
                message.job_id,
                message.world_size,
                message.rank,
                deadline,
                self.conn.peer,
                message.private,
                self,
            )
        except Refusal as refusal:
            self._fail(refusal.code, refusal.message)
            return
        self.job_id = message.job_id
        self.rank = message.rank
        self._status = _PENDING_WORLD
        self.conn.send(encode(Accepted(self.conn.peer, int(remaining * 1000))))

    def world_ready(self, frame: bytes) -> None:
        self._status = _READY
        self._touch()
        self.conn.send(frame)

    def world_failed(self, code: ErrorCode, message: str) -> None:
        self._status = _READY  # the registry has already let go of this rank
        self._fail(code, message)

    def _leave(self) -> None:
        self._withdraw()
        self._status = _READY
        self._touch()
        self.conn.send(encode(Left()))

    # -- endings --------------------------------------------------------------------------

    def _withdraw(self) -> None:
        state = self.conn.state
        if self._status == _PENDING_PAIR:
            state.native_board.withdraw(self.pair_name, self)
        elif self._status == _PENDING_WORLD:
            state.worlds.leave(self.job_id, self.rank, self)
        self._cancel_wait()

    def _fail(self, code: ErrorCode, message: str) -> None:
        """Send ERROR (the last frame), count why, and finish the connection."""
        self._withdraw()
        self._status = _CLOSED
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        metrics = self.conn.state.metrics
        if code in _AUTH_REASONS or (code == ErrorCode.LIMIT_EXCEEDED and not self.authenticated):
            metrics.inc("auth_failures_total", reason=_AUTH_REASONS.get(code, "nonce_cache_full"))
        elif code in _PROTOCOL_FAULTS:
            metrics.inc("protocol_errors_total", kind=_PROTOCOL_FAULTS[code])
        elif code == ErrorCode.LIMIT_EXCEEDED:
            metrics.inc("limit_refusals_total", limit="waiting")
        log_event(
            logging.DEBUG,
            "native_error",
            peer=str(self.conn.peer),
            code=code.name,
            message=message,
        )
        self.conn.send(encode(Error(code, message)))
        self.conn.finish()

    def _cancel_wait(self) -> None:
        if self._wait_timer is not None:
            self._wait_timer.cancel()
            self._wait_timer = None

    def _touch(self) -> None:
        """Restart the idle clock; one timer per connection, re-armed lazily when it fires."""
        loop = self.conn.state.loop
        self._last_activity = loop.time()
        if self._idle_timer is None:
            self._idle_timer = loop.call_later(
                self.conn.state.config.idle_timeout, self._idle_check
            )

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._status in (_PENDING_PAIR, _PENDING_WORLD):
            self._touch()  # a pending request has its own deadline; look again later
            return
        if self._status != _READY:
            return
        loop = self.conn.state.loop
        idle_timeout = self.conn.state.config.idle_timeout
        left = self._last_activity + idle_timeout - loop.time()
        if left > 0:
            self._idle_timer = loop.call_later(left, self._idle_check)
            return
        self.conn.state.metrics.inc("timeouts_total", kind="idle")
        self._fail(ErrorCode.IDLE_TIMEOUT, f"no request for {idle_timeout:g} s")

    def hello_expired(self) -> None:
        if self._status == _PREAMBLE:
            self._status = _CLOSED
            self.conn.abort()  # not known to speak our protocol: no reply
        elif self._status != _CLOSED and not self.authenticated:
            timeout = self.conn.state.config.hello_timeout
            self._fail(ErrorCode.AUTH_REQUIRED, f"no AUTH within {timeout:g} s of connecting")

    def connection_lost(self) -> None:
        self._withdraw()
        self._status = _CLOSED
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def shutdown(self) -> None:
        if self._status != _CLOSED:
            self._fail(ErrorCode.SHUTTING_DOWN, "the rendezvous server is shutting down")
