"""Hole-punched TCP links: a :class:`LinkMaker` that reaches peers behind NATs.

:func:`punch_links` binds one local port and uses it for everything: the connection to the
rendezvous server (whose WORLD reply gives every rank's public and private endpoint), a
listener, and every connect toward a peer. A NAT that keeps one public port per local port
(endpoint-independent mapping, "cone") then shows each peer the public endpoint the server
observed, and a SYN we send toward a peer opens our NAT for the peer's SYN in return.

``link(peer, deadline)`` punches lazily, the first time the communicator needs the edge:

1. Keep one connect in flight from the shared port toward each of the peer's endpoints (public,
   and private for a peer on the same host or LAN, where hairpin NAT usually fails); re-issue
   one that errs (a NAT's RST, an ICMP error) with backoff, and one that got no answer after
   ``attempt_timeout_s`` (the retried SYN has the same 4-tuple, so a NAT reuses its mapping).
2. Accept on the same port all along: the peer's SYN may arrive when no connect of ours is in
   flight, or before we started at all.
3. Run :func:`authenticate_link` on every socket that connects, either way, each in its own
   thread so a silent stranger only holds its own thread. Strangers are closed and listed in
   ``refusals``; the attempt goes on.
4. Both ends may complete several connections (one per endpoint pair, plus the accepted ones);
   they must keep the same one. The lower rank decides: on the first connection it has
   authenticated it writes one byte, ``K`` (keep), and on any other ``X`` (close). The higher
   rank keeps only a connection on which ``K`` arrives. The byte follows the handshake, so the
   frames after it are untouched.

Everything a call of ``link`` started survives its deadline: in-flight connects, connections
in their handshake and authenticated ones awaiting the decision stay in a per-peer attempt,
and the next call for that peer resumes it (``FallbackLinks`` calls the higher rank in short
slices). A background thread does the connects and accepts; ``link`` only waits for the
outcome, and raises :class:`CommTimeoutError` at its deadline naming what was tried.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cosmicai.comm.channel import Channel, TcpChannel
from cosmicai.comm.frames import max_frame_bytes
from cosmicai.comm.handshake import MIN_KEY_BYTES, authenticate_link
from cosmicai.comm.links import LinkMaker, check_world
from cosmicai.exceptions import (
    CommError,
    CommTimeoutError,
    PeerAuthError,
    RendezvousError,
    RendezvousTimeoutError,
    WorldIncompleteError,
)
from cosmicai.rendezvous.client import BlockingRendezvousClient, WorldResult
from cosmicai.rendezvous.wire.endpoint import Endpoint

logger = logging.getLogger(__name__)

#: The lower rank's verdict on an authenticated connection, one byte after the handshake.
KEEP = b"K"
DROP = b"X"

#: An in-flight connect with no answer is re-issued after this long. A NAT that silently drops
#: the first SYN (the peer's side was not open yet) is usually opened by the peer's own SYN
#: within milliseconds; the retry only matters when both first SYNs died.
DEFAULT_ATTEMPT_TIMEOUT = 0.5
#: Backoff after a connect that failed outright (refused, unreachable), doubling to the cap.
RETRY_INITIAL = 0.02
RETRY_MAX = 0.5
#: Each candidate connection's handshake must finish within this long.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Handshakes in progress at once; more incoming connections are closed at once (a flood of
#: strangers must not cost a thread each).
MAX_HANDSHAKES = 64
LISTEN_BACKLOG = 128
#: The connection to the rendezvous server and its preamble/AUTH exchange.
CONNECT_TIMEOUT = 10.0
#: The rendezvous server's world deadline is ours minus this (at most a tenth of ours).
REGISTER_MARGIN = 0.5
#: The engine wakes at least this often even with nothing scheduled (cheap; bounds any
#: missed wake-up).
_IDLE_WAIT = 1.0


def _bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` that shares the port with our other sockets.

    SO_REUSEPORT (set before bind, on every socket) is what lets a listener and several
    connecting sockets hold one port at once; SO_REUSEADDR lets a connect reuse the port while
    an earlier connection from it is closing.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _error_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


@dataclass(frozen=True)
class PeerEndpoints:
    """Where a peer can be reached: the public endpoint the rendezvous server observed, and the
    private one the peer reported (its own address and port: same host or LAN)."""

    public: Endpoint
    private: Endpoint | None


@dataclass(frozen=True)
class PunchOutcome:
    """How one link was made."""

    peer: int
    #: ``"connect"`` (our connect completed, possibly by simultaneous open) or ``"accept"``.
    via: str
    #: Which of the peer's endpoints the connection used: ``"public"`` or ``"private"`` (for
    #: an accepted connection: the one it came from), or ``"other"`` (accepted from an address
    #: the peer did not announce, e.g. a NAT that mapped the port differently).
    route: str
    #: The peer's address on that connection.
    endpoint: Endpoint
    #: From the first ``link`` call for this peer to the decision.
    seconds: float
    #: Connects issued toward the peer, over all its endpoints.
    connects: int


@dataclass
class _Target:
    """One endpoint of a peer we connect toward, and the state of our connects to it."""

    route: str
    endpoint: Endpoint
    connector: socket.socket | None = None
    issued: float = 0.0
    next_try: float = 0.0
    delay: float = RETRY_INITIAL
    attempts: int = 0
    #: A connection from this target is in its handshake: no new connect meanwhile (it would
    #: need the same 4-tuple).
    handshaking: bool = False
    errors: Counter[str] = field(default_factory=Counter)

    def back_off(self, now: float, reason: str) -> None:
        self.errors[reason] += 1
        self.next_try = now + self.delay
        self.delay = min(self.delay * 2, RETRY_MAX)

    def describe(self) -> str:
        errors = ", ".join(f"{name} x{count}" for name, count in self.errors.most_common())
        return (
            f"{self.route} {self.endpoint!s}: {self.attempts} connect(s)"
            + (f" ({errors})" if errors else "")
            + (", one in flight" if self.connector is not None else "")
        )


@dataclass
class _Candidate:
    """An authenticated connection to a peer, awaiting the keep/close decision."""

    sock: socket.socket
    via: str
    route: str
    endpoint: Endpoint


@dataclass
class _Attempt:
    """Everything done so far toward one peer; it outlives a ``link`` call's deadline."""

    peer: int
    targets: list[_Target]
    started: float | None = None
    #: The engine issues connects only until the latest deadline a ``link`` call gave.
    active_until: float = 0.0
    candidates: list[_Candidate] = field(default_factory=list)
    done: bool = False
    #: Authenticated connections that died or were closed before a decision.
    dropped: int = 0


class PunchLinks:
    """A :class:`LinkMaker` punching TCP links from one shared local port (module docstring).

    ``listener`` is a listening socket bound with SO_REUSEADDR and SO_REUSEPORT; every connect
    is made from its port. ``peers[r]`` holds rank ``r``'s endpoints (ours included, unused).
    ``on_close`` runs last in :meth:`close` (the factory closes the rendezvous connection there).
    """

    def __init__(
        self,
        rank: int,
        size: int,
        peers: Sequence[PeerEndpoints],
        *,
        key: bytes,
        job_id: str,
        listener: socket.socket,
        public: Endpoint | None = None,
        max_payload: int | None = None,
        handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT,
        attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        check_world(rank, size, key, len(peers), "peer records")
        self._rank = rank
        self.size = size
        self.peers = list(peers)
        self._key = key
        self.job_id = job_id
        self.max_payload = max_frame_bytes(max_payload)
        self.handshake_timeout_s = handshake_timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self._listener = listener
        host, port = listener.getsockname()[:2]
        self._bind_host = str(host)
        #: The local port every socket of this rank uses.
        self.port = int(port)
        #: This rank's public endpoint as the rendezvous server saw it (when known).
        self.public = public
        self._on_close = on_close

        self._lock = threading.Lock()
        self._attempts: dict[int, _Attempt] = {}
        self._handshaking: set[socket.socket] = set()
        self._closed = False
        self._pipes_open = True
        #: How each link was made, by peer.
        self.outcomes: dict[int, PunchOutcome] = {}
        #: Why recent incoming connections were refused (newest last).
        self.refusals: list[str] = []
        # Two self-pipes: one wakes the engine (new work, or time to stop), the other wakes a
        # waiting ``link`` (a candidate arrived). Non-blocking writes: a full pipe already
        # means "wake up".
        self._engine_wake = os.pipe()
        self._link_wake = os.pipe()
        for read_end, write_end in (self._engine_wake, self._link_wake):
            os.set_blocking(read_end, False)
            os.set_blocking(write_end, False)
        listener.setblocking(False)
        self._engine = threading.Thread(
            target=self._run_engine, name=f"cosmicai-punch-{rank}", daemon=True
        )
        self._engine.start()

    @property
    def rank(self) -> int:
        return self._rank

    def __repr__(self) -> str:
        return f"PunchLinks(rank={self._rank}, size={self.size}, port={self.port})"

    # -- the LinkMaker interface --------------------------------------------------------------

    def link(self, peer: int, deadline: float) -> Channel:
        if peer == self._rank or not 0 <= peer < self.size:
            raise ValueError(f"rank {self._rank} cannot link to rank {peer}")
        with self._lock:
            if self._closed:
                raise CommError(f"rank {self._rank}: the link maker is closed", peer=peer)
            attempt = self._attempt(peer)
            if attempt.done:
                raise CommError(
                    f"rank {self._rank} already made its link to rank {peer}; links are made "
                    "once per pair",
                    peer=peer,
                )
            if attempt.started is None:
                attempt.started = time.monotonic()
                logger.debug(
                    "rank %d punching toward rank %d: %s",
                    self._rank,
                    peer,
                    ", ".join(f"{t.route} {t.endpoint!s}" for t in attempt.targets),
                )
            attempt.active_until = max(attempt.active_until, deadline)
        self._notify(self._engine_wake)
        if self._rank < peer:
            return self._decide(attempt, deadline)
        return self._await_decision(attempt, deadline)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            leftovers = [c.sock for a in self._attempts.values() for c in a.candidates]
            for attempt in self._attempts.values():
                attempt.candidates.clear()
                if attempt.started is not None and not attempt.done:
                    logger.info(
                        "rank %d: no TCP link to rank %d was made (%.1f s after the first try): %s",
                        self._rank,
                        attempt.peer,
                        time.monotonic() - attempt.started,
                        "; ".join(t.describe() for t in attempt.targets),
                    )
            # Unblocks handshake threads at once; each closes its own socket.
            for sock in self._handshaking:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._notify(self._engine_wake)
        self._engine.join(timeout=5)
        with self._lock:
            self._pipes_open = False
            for read_end, write_end in (self._engine_wake, self._link_wake):
                os.close(read_end)
                os.close(write_end)
        self._listener.close()
        for sock in leftovers:
            sock.close()
        if self._on_close is not None:
            self._on_close()

    # -- deciding (lower rank) and following (higher rank) ------------------------------------

    def _decide(self, attempt: _Attempt, deadline: float) -> Channel:
        """Lower rank: keep the first authenticated connection, tell the peer, close the rest."""
        while True:
            with self._lock:
                self._check_open(attempt.peer)
                self._drain(self._link_wake[0])
                candidate = attempt.candidates.pop(0) if attempt.candidates else None
                if candidate is None and time.monotonic() >= deadline:
                    raise self._timeout(attempt)
            if candidate is not None:
                if _still_open(candidate.sock):
                    try:
                        # One byte into an idle socket's empty buffer: never blocks.
                        candidate.sock.send(KEEP, socket.MSG_DONTWAIT)
                    except OSError as exc:
                        logger.debug("rank %d: keeping a link failed: %s", self._rank, exc)
                    else:
                        return self._finish(attempt, candidate)
                # The peer closed it meanwhile (e.g. its handshake deadline passed): next one.
                candidate.sock.close()
                with self._lock:
                    attempt.dropped += 1
                continue
            self._wait([], deadline)

    def _await_decision(self, attempt: _Attempt, deadline: float) -> Channel:
        """Higher rank: wait for ``K`` on one of the authenticated connections."""
        while True:
            with self._lock:
                self._check_open(attempt.peer)
                self._drain(self._link_wake[0])
                candidates = list(attempt.candidates)
            kept = None
            for candidate in candidates:
                verdict = _read_verdict(candidate.sock)
                if verdict is None:
                    continue  # nothing yet
                with self._lock:
                    attempt.candidates.remove(candidate)
                if verdict == KEEP:
                    kept = candidate
                    break
                if verdict not in (DROP, b""):
                    logger.warning(
                        "rank %d: rank %d sent %r instead of a keep/close decision",
                        self._rank,
                        attempt.peer,
                        verdict,
                    )
                candidate.sock.close()
                with self._lock:
                    attempt.dropped += 1
            if kept is not None:
                return self._finish(attempt, kept)
            if time.monotonic() >= deadline:
                with self._lock:
                    raise self._timeout(attempt)
            with self._lock:
                pending = [candidate.sock for candidate in attempt.candidates]
            self._wait(pending, deadline)

    def _finish(self, attempt: _Attempt, kept: _Candidate) -> Channel:
        with self._lock:
            attempt.done = True
            extras, attempt.candidates = attempt.candidates, []
            connects = sum(target.attempts for target in attempt.targets)
        for extra in extras:
            self._discard(extra.sock, attempt.peer)
        self._notify(self._engine_wake)  # the engine closes this peer's connects
        started = attempt.started if attempt.started is not None else time.monotonic()
        outcome = PunchOutcome(
            attempt.peer,
            kept.via,
            kept.route,
            kept.endpoint,
            time.monotonic() - started,
            connects,
        )
        self.outcomes[attempt.peer] = outcome
        logger.info(
            "rank %d punched a TCP link to rank %d in %.1f ms: %s, %s endpoint %s "
            "(%d connect(s), %d spare connection(s) closed)",
            self._rank,
            attempt.peer,
            outcome.seconds * 1000,
            outcome.via,
            outcome.route,
            outcome.endpoint,
            connects,
            len(extras) + attempt.dropped,
        )
        return TcpChannel(kept.sock, attempt.peer, max_payload=self.max_payload)

    def _discard(self, sock: socket.socket, peer: int) -> None:
        """Close a spare authenticated connection; the lower rank says so first."""
        if self._rank < peer:
            with contextlib.suppress(OSError):
                sock.send(DROP, socket.MSG_DONTWAIT)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _timeout(self, attempt: _Attempt) -> CommTimeoutError:
        """The error for a deadline that passed (called with the lock held)."""
        started = attempt.started if attempt.started is not None else time.monotonic()
        parts = [target.describe() for target in attempt.targets]
        if attempt.candidates:
            parts.append(
                f"{len(attempt.candidates)} authenticated connection(s) waiting for rank "
                f"{min(self._rank, attempt.peer)}'s keep/close decision"
            )
        if attempt.dropped:
            parts.append(f"{attempt.dropped} authenticated connection(s) lost before a decision")
        if self.refusals:
            parts.append(f"refused meanwhile: {self.refusals[-3:]}")
        logger.debug("rank %d: no link to rank %d yet: %s", self._rank, attempt.peer, parts)
        return CommTimeoutError(
            f"rank {self._rank} could not punch a TCP link to rank {attempt.peer} before the "
            f"deadline ({time.monotonic() - started:.2f} s since the first try): "
            + "; ".join(parts),
            peer=attempt.peer,
        )

    def _wait(self, socks: list[socket.socket], deadline: float) -> None:
        """Until a candidate arrives, one of ``socks`` is readable, or the deadline."""
        poller = select.poll()
        poller.register(self._link_wake[0], select.POLLIN)
        for sock in socks:
            poller.register(sock, select.POLLIN)
        remaining = deadline - time.monotonic()
        if remaining > 0:
            poller.poll(max(1, int(remaining * 1000 + 0.999)))

    def _check_open(self, peer: int) -> None:
        # Checked, with the lock held, before the wake pipe is touched: close() closes it.
        if self._closed:
            raise CommError(f"rank {self._rank}: the link maker was closed", peer=peer)

    # -- plumbing -----------------------------------------------------------------------------

    def _attempt(self, peer: int) -> _Attempt:
        """The attempt toward ``peer``, made on first use (called with the lock held)."""
        attempt = self._attempts.get(peer)
        if attempt is None:
            record = self.peers[peer]
            targets = [_Target("public", record.public)]
            if record.private is not None and record.private != record.public:
                # Hairpin NAT rarely works: peers on one host or LAN meet at the private one.
                targets.insert(0, _Target("private", record.private))
            attempt = self._attempts[peer] = _Attempt(peer, targets)
        return attempt

    def _route_of(self, peer: int, address: Endpoint) -> str:
        record = self.peers[peer]
        if address == record.private:
            return "private"
        return "public" if address == record.public else "other"

    def _notify(self, pipe: tuple[int, int]) -> None:
        with self._lock:
            if not self._pipes_open:
                return
            with contextlib.suppress(BlockingIOError):
                os.write(pipe[1], b"x")

    @staticmethod
    def _drain(fd: int) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(fd, 4096):
                pass

    # -- the engine: connects and accepts -----------------------------------------------------

    def _run_engine(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        selector.register(self._engine_wake[0], selectors.EVENT_READ, None)
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    wait = self._schedule(selector, time.monotonic())
                for key, _ in selector.select(wait):
                    if key.fileobj is self._listener:
                        self._accept_all()
                    elif key.data is None:
                        self._drain(self._engine_wake[0])
                    else:
                        self._connected(selector, key)
        except Exception:  # pragma: no cover - a bug; links will time out and say why
            logger.exception("rank %d: the punching engine failed", self._rank)
        finally:
            with self._lock:
                for attempt in self._attempts.values():
                    for target in attempt.targets:
                        self._drop_connector(selector, target)
            selector.close()

    def _schedule(self, selector: selectors.BaseSelector, now: float) -> float:
        """Issue the connects that are due; return how long the engine may sleep (lock held)."""
        wait = _IDLE_WAIT
        for attempt in self._attempts.values():
            if attempt.done:
                for target in attempt.targets:
                    self._drop_connector(selector, target)
                continue
            if now >= attempt.active_until:
                # Between link calls in-flight connects stay (the kernel retries their SYN) but
                # no new ones are issued: every loop here ends with its caller's deadline.
                continue
            wait = min(wait, attempt.active_until - now)
            for target in attempt.targets:
                if target.connector is not None and now - target.issued >= self.attempt_timeout_s:
                    self._drop_connector(selector, target)
                    target.errors["no answer"] += 1
                if target.connector is not None:
                    wait = min(wait, target.issued + self.attempt_timeout_s - now)
                elif not target.handshaking and not attempt.candidates:
                    if now >= target.next_try:
                        self._issue(selector, attempt, target, now)
                        if target.connector is not None:
                            wait = min(wait, self.attempt_timeout_s)
                    if target.connector is None:
                        wait = min(wait, max(target.next_try - now, 0.001))
        return max(wait, 0.0)

    def _issue(
        self, selector: selectors.BaseSelector, attempt: _Attempt, target: _Target, now: float
    ) -> None:
        target.attempts += 1
        try:
            sock = _bound_socket(self._bind_host, self.port)
        except OSError as exc:
            target.back_off(now, _error_name(exc.errno or 0))
            return
        sock.setblocking(False)
        code = sock.connect_ex(target.endpoint.address)
        if code not in (0, errno.EINPROGRESS):
            # EADDRNOTAVAIL here usually means a connection with this very 4-tuple exists
            # already (the peer's SYN was accepted): it is in its handshake or decided.
            sock.close()
            target.back_off(now, _error_name(code))
            return
        target.connector = sock
        target.issued = now
        selector.register(sock, selectors.EVENT_WRITE, (attempt, target))

    @staticmethod
    def _drop_connector(selector: selectors.BaseSelector, target: _Target) -> None:
        if target.connector is not None:
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(target.connector)
            target.connector.close()
            target.connector = None

    def _connected(self, selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        attempt, target = key.data
        sock = key.fileobj
        assert isinstance(sock, socket.socket)
        with self._lock:
            if target.connector is not sock:
                return
            selector.unregister(sock)
            target.connector = None
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                sock.close()
                target.back_off(time.monotonic(), _error_name(code))
                return
            if attempt.done:
                sock.close()
                return
            target.handshaking = True
            target.delay = RETRY_INITIAL
        self._start_handshake(sock, "connect", target.endpoint, attempt.peer, target)

    def _accept_all(self) -> None:
        while True:
            try:
                conn, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # E.g. out of file descriptors: the listener stays readable, so pause briefly
                # instead of spinning on it.
                logger.warning("rank %d: accept failed: %s", self._rank, exc)
                time.sleep(0.01)
                return
            self._start_handshake(conn, "accept", Endpoint.from_sockaddr(address), None, None)

    def _start_handshake(
        self,
        sock: socket.socket,
        via: str,
        remote: Endpoint,
        expected: int | None,
        target: _Target | None,
    ) -> None:
        with self._lock:
            busy = self._closed or len(self._handshaking) >= MAX_HANDSHAKES
            if not busy:
                self._handshaking.add(sock)
            elif target is not None:
                target.handshaking = False
                target.back_off(time.monotonic(), "too many handshakes")
        if busy:
            sock.close()
            if not self._closed:
                self._refuse(f"{remote!s}: too many handshakes in progress")
            return
        threading.Thread(
            target=self._handshake,
            args=(sock, via, remote, expected, target),
            name=f"cosmicai-punch-auth-{self._rank}",
            daemon=True,
        ).start()

    def _handshake(
        self,
        sock: socket.socket,
        via: str,
        remote: Endpoint,
        expected: int | None,
        target: _Target | None,
    ) -> None:
        try:
            sock.setblocking(True)
            peer = authenticate_link(
                sock,
                rank=self._rank,
                size=self.size,
                key=self._key,
                job_id=self.job_id,
                deadline=time.monotonic() + self.handshake_timeout_s,
                peer=expected,
            )
        except (PeerAuthError, OSError) as exc:
            with self._lock:
                self._handshaking.discard(sock)
                if target is not None:
                    target.handshaking = False
                    target.back_off(time.monotonic(), "handshake failed")
            sock.close()
            if self._closed:
                return
            if via == "accept":
                self._refuse(f"{remote!s}: {exc}")
            else:
                logger.info(
                    "rank %d: the connection to %s failed the link handshake: %s",
                    self._rank,
                    str(remote),
                    exc,
                )
            self._notify(self._engine_wake)
            return
        with self._lock:
            self._handshaking.discard(sock)
            if target is not None:
                target.handshaking = False
            attempt = self._attempt(peer)
            route = target.route if target is not None else self._route_of(peer, remote)
            wanted = not self._closed and not attempt.done
            if wanted:
                attempt.candidates.append(_Candidate(sock, via, route, remote))
        if wanted:
            self._notify(self._link_wake)
        else:
            logger.debug("rank %d: closed a spare link from rank %d (%s)", self._rank, peer, via)
            self._discard(sock, peer)

    def _refuse(self, why: str) -> None:
        logger.warning("rank %d refused a connection from %s", self._rank, why)
        with self._lock:
            self.refusals = [*self.refusals[-9:], why]


def _still_open(sock: socket.socket) -> bool:
    """False when the peer closed the connection (or sent anything: it must not yet)."""
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    # EOF, or bytes the peer must not send before the decision: either way not a keeper.
    del data
    return False


def _read_verdict(sock: socket.socket) -> bytes | None:
    """The decision byte if it is there; ``b""`` when the connection died; None when pending."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


# -- the factory: rendezvous, then the link maker ------------------------------------------


def punch_links(
    *,
    rank: int,
    size: int,
    job_id: str,
    key: bytes,
    rendezvous: Endpoint,
    rendezvous_secret: bytes | None,
    deadline_s: float,
    private_host: str | None = None,
    max_payload: int | None = None,
) -> LinkMaker:
    """Register ``rank`` of ``job_id``'s world and return a hole-punching :class:`LinkMaker`.

    Binds one local port (IPv4) for the rendezvous connection, the listener and every punch;
    registers with the ``rendezvous`` server (authenticated with ``rendezvous_secret`` when
    given) and blocks until all ``size`` ranks are in, at most ``deadline_s`` seconds. Raises
    :class:`CommTimeoutError` when the world is not complete by then (the server's message
    names the missing ranks) and :class:`CommError` when the server cannot be reached or
    refuses. ``private_host`` is the address announced as this rank's private endpoint
    (default: the local address of the connection to the server). The result is a
    :class:`PunchLinks`; its links are authenticated with ``key``.
    """
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is outside the world of size {size}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the job key must be at least {MIN_KEY_BYTES} bytes")
    if deadline_s <= 0:
        raise ValueError(f"deadline_s must be positive, not {deadline_s}")
    started = time.monotonic()
    deadline = started + deadline_s
    who = f"rank {rank} of job {job_id!r}"
    try:
        # IPv4 only: NATs, and the hole punching through them, are an IPv4 matter.
        infos = socket.getaddrinfo(
            rendezvous.host, rendezvous.port, socket.AF_INET, socket.SOCK_STREAM
        )
    except OSError as exc:
        raise CommError(f"{who}: cannot resolve the rendezvous server {rendezvous}: {exc}") from exc
    server_ip = str(infos[0][4][0])

    listener = _bound_socket("0.0.0.0", 0)
    try:
        listener.listen(LISTEN_BACKLOG)
        local_port = int(listener.getsockname()[1])
        client, world = _join_world(
            who,
            rendezvous,
            server_ip,
            secret=rendezvous_secret,
            local_port=local_port,
            private_host=private_host,
            job_id=job_id,
            size=size,
            rank=rank,
            deadline=deadline,
        )
    except BaseException:
        listener.close()
        raise

    def close_rendezvous() -> None:
        # The connection was kept open while links were made: on a real NAT it keeps the
        # port's mapping alive. The server closes it when idle anyway.
        with contextlib.suppress(OSError, RendezvousError):
            client.close()

    logger.info(
        "rank %d of job %r registered with %s in %.1f ms: public %s, private %s, port %d",
        rank,
        job_id,
        rendezvous,
        (time.monotonic() - started) * 1000,
        world.public,
        world.peers[rank].private,
        local_port,
    )
    return PunchLinks(
        rank,
        size,
        [PeerEndpoints(record.public, record.private) for record in world.peers],
        key=key,
        job_id=job_id,
        listener=listener,
        public=world.public,
        max_payload=max_payload,
        on_close=close_rendezvous,
    )


def _join_world(
    who: str,
    rendezvous: Endpoint,
    server_ip: str,
    *,
    secret: bytes | None,
    local_port: int,
    private_host: str | None,
    job_id: str,
    size: int,
    rank: int,
    deadline: float,
) -> tuple[BlockingRendezvousClient, WorldResult]:
    """Connect from ``local_port`` and register; every failure becomes a CommError naming
    ``who`` and the server."""
    size_text = f"the world of {size} ranks"
    try:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        client = BlockingRendezvousClient(
            server_ip,
            rendezvous.port,
            secret=secret,
            local_address=("0.0.0.0", local_port),
            timeout=min(CONNECT_TIMEOUT, remaining),
        )
        try:
            private = Endpoint(private_host or client.local_endpoint.host, local_port)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            # The server is asked for a slightly earlier deadline so that its verdict, which
            # names the missing ranks, arrives before our own deadline cuts the wait short.
            server_deadline = remaining - min(REGISTER_MARGIN, remaining * 0.1)
            world = client.register(
                job_id,
                size,
                rank,
                private=private,
                deadline=max(server_deadline, 0.001),
                timeout=remaining,
            )
        except BaseException:
            with contextlib.suppress(OSError, RendezvousError):
                client.close()
            raise
    except TimeoutError:
        raise CommTimeoutError(
            f"{who}: {size_text} was not complete at the rendezvous server {rendezvous} "
            "before the deadline (the server did not answer in time)"
        ) from None
    except (WorldIncompleteError, RendezvousTimeoutError) as exc:
        raise CommTimeoutError(
            f"{who}: no complete world of {size} ranks from the rendezvous server {rendezvous} "
            f"before the deadline: {exc}"
        ) from exc
    except RendezvousError as exc:
        raise CommError(
            f"{who}: registration at the rendezvous server {rendezvous} failed: {exc}"
        ) from exc
    except OSError as exc:
        raise CommError(f"{who}: cannot reach the rendezvous server {rendezvous}: {exc}") from exc
    return client, world
