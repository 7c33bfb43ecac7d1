"""Link makers: how a rank obtains a channel to a peer. The seam between the communicator and
the ways links are made.

The communicator asks ``link_maker.link(peer, deadline)`` the first time an algorithm needs the
edge to ``peer`` and reuses the channel afterwards. Both ends of an edge ask at about the same
time (they are about to exchange a message), and a link maker must hand both the two ends of
the same link, or raise on both. Three are here:

- :class:`StaticTcpLinks`: every rank listens on a known endpoint and the lower rank of a pair
  connects to the higher (local runs, tests, hosts that reach each other);
- :class:`StoreLinks`: :class:`StoreChannel` links through an object store;
- :class:`FallbackLinks`: a primary (direct) maker, and per link the store when the primary
  cannot make that link within its own deadline.

The hole-punching maker (rendezvous + simultaneous open) is another primary: it obtains a
connected socket by whatever means, runs :func:`authenticate_link` on it and wraps it in a
:class:`TcpChannel`.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from cosmicai.comm.channel import Channel, TcpChannel
from cosmicai.comm.frames import FrameKind, max_frame_bytes
from cosmicai.comm.handshake import MIN_KEY_BYTES, authenticate_link
from cosmicai.comm.settings import CommSettings
from cosmicai.comm.store import DEFAULT_POLL_INITIAL, StoreChannel
from cosmicai.exceptions import CommError, CommProtocolError, CommTimeoutError, PeerAuthError
from cosmicai.rendezvous.wire.endpoint import Endpoint
from cosmicai.storage import Storage

logger = logging.getLogger(__name__)

#: Tag of the fallback decision frame (negative: never a user tag).
LINK_DECISION_TAG = -1000
#: Payloads of that frame: the lower rank's verdict on the link.
USE_PRIMARY = b"P"
USE_FALLBACK = b"F"

DEFAULT_HANDSHAKE_TIMEOUT = 10.0


class LinkMaker(Protocol):
    """Makes the channel to one peer; used by one communicator, from one thread.

    ``deadline`` is a ``time.monotonic()`` instant. ``link`` raises a :class:`CommError`
    subclass when the link cannot be made (CommTimeoutError when the peer did not turn up,
    PeerAuthError when something that is not our peer answered).
    """

    #: This rank: the link maker acts for one rank of one world.
    @property
    def rank(self) -> int: ...

    def link(self, peer: int, deadline: float) -> Channel: ...

    def close(self) -> None:
        """Stop accepting links and release what is not handed out yet."""


class StaticTcpLinks:
    """Direct TCP links between ranks whose listening endpoints are known in advance.

    Each rank listens on ``endpoints[rank]`` (or on ``listener``, a bound, listening socket
    the caller made, e.g. on port 0). The lower rank of a pair connects to the higher; a
    background thread accepts and authenticates incoming connections, so a rank busy with
    another peer never holds up a lower rank's connect. Connections that fail the handshake
    are closed and logged.
    """

    def __init__(
        self,
        rank: int,
        size: int,
        endpoints: Sequence[Endpoint],
        *,
        key: bytes,
        job_id: str,
        listener: socket.socket | None = None,
        max_payload: int | None = None,
        handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        check_world(rank, size, key, len(endpoints), "endpoints")
        self._rank = rank
        self.size = size
        self.endpoints = list(endpoints)
        self._key = key
        self.job_id = job_id
        self.max_payload = max_frame_bytes(max_payload)
        self.handshake_timeout_s = handshake_timeout_s
        if listener is None:
            listener = socket.create_server(self.endpoints[rank].address, backlog=max(size, 16))
        self._listener = listener
        self._accepted: dict[int, TcpChannel] = {}
        self._handed_out: set[int] = set()
        self._condition = threading.Condition()
        self._closed = False
        #: Why recent incoming connections were refused (newest last), for error messages.
        self.refusals: list[str] = []
        self._wake_read, self._wake_write = os.pipe()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"cosmicai-comm-accept-{rank}", daemon=True
        )
        self._acceptor.start()

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def endpoint(self) -> Endpoint:
        """Where this rank actually listens (the port is known once bound)."""
        return Endpoint.from_sockaddr(self._listener.getsockname())

    def link(self, peer: int, deadline: float) -> Channel:
        if peer == self._rank or not 0 <= peer < self.size:
            raise ValueError(f"rank {self._rank} cannot link to rank {peer}")
        if self._rank < peer:
            return self._connect(peer, deadline)
        return self._wait_accepted(peer, deadline)

    def _connect(self, peer: int, deadline: float) -> Channel:
        endpoint = self.endpoints[peer]
        delay = 0.005
        last_error: OSError | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommTimeoutError(
                    f"could not connect to rank {peer} at {endpoint} before the deadline"
                    + (f" (last error: {last_error})" if last_error else ""),
                    peer=peer,
                )
            try:
                sock = socket.create_connection(endpoint.address, timeout=remaining)
            except OSError as exc:
                # Refused: the peer may not listen yet. Try again until the deadline.
                last_error = exc
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 0.1)
                continue
            try:
                authenticate_link(
                    sock,
                    rank=self._rank,
                    size=self.size,
                    key=self._key,
                    job_id=self.job_id,
                    deadline=deadline,
                    peer=peer,
                )
                return TcpChannel(sock, peer, max_payload=self.max_payload)
            except BaseException:
                sock.close()
                raise

    def _wait_accepted(self, peer: int, deadline: float) -> Channel:
        with self._condition:
            while peer not in self._accepted:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    refused = f"; refused meanwhile: {self.refusals[-3:]}" if self.refusals else ""
                    raise CommTimeoutError(
                        f"rank {peer} did not connect to rank {self._rank} "
                        f"(listening on {self.endpoint}) before the "
                        f"deadline{refused}",
                        peer=peer,
                    )
                self._condition.wait(remaining)
            self._handed_out.add(peer)
            return self._accepted.pop(peer)

    def _accept_loop(self) -> None:
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_read in ready or self._closed:
                return
            try:
                conn, address = self._listener.accept()
            except OSError as exc:
                if self._closed:
                    return
                logger.warning("rank %d: accept failed: %s", self._rank, exc)
                time.sleep(0.01)  # e.g. out of file descriptors: do not spin
                continue
            threading.Thread(
                target=self._admit,
                args=(conn, address),
                name=f"cosmicai-comm-admit-{self._rank}",
                daemon=True,
            ).start()

    def _admit(self, conn: socket.socket, address: object) -> None:
        conn.setblocking(True)
        try:
            peer = authenticate_link(
                conn,
                rank=self._rank,
                size=self.size,
                key=self._key,
                job_id=self.job_id,
                deadline=time.monotonic() + self.handshake_timeout_s,
            )
            if peer > self._rank:
                raise PeerAuthError(
                    f"rank {peer} connected to rank {self._rank}, but the lower rank connects",
                    peer=peer,
                )
        except PeerAuthError as exc:
            conn.close()
            logger.warning("rank %d refused a connection from %s: %s", self._rank, address, exc)
            with self._condition:
                self.refusals = [*self.refusals[-9:], f"{address}: {exc}"]
            return
        channel = TcpChannel(conn, peer, max_payload=self.max_payload)
        with self._condition:
            if self._closed or peer in self._handed_out:
                logger.warning(
                    "rank %d: dropped a second link from rank %d (already linked)", self._rank, peer
                )
                channel.close()
                return
            previous = self._accepted.pop(peer, None)
            if previous is not None:
                # The peer gave up on that attempt and made a new one: the newest is the live one.
                previous.close()
            self._accepted[peer] = channel
            self._condition.notify_all()

    def close(self) -> None:
        with self._condition:
            if self._closed:
                return
            self._closed = True
            unclaimed = list(self._accepted.values())
            self._accepted.clear()
            self._condition.notify_all()
        os.write(self._wake_write, b"x")
        self._acceptor.join(timeout=5)
        self._listener.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        for channel in unclaimed:
            channel.close()


def check_world(rank: int, size: int, key: bytes, records: int, what: str) -> None:
    """The checks every direct-link maker makes of its world before binding anything."""
    if records != size:
        raise ValueError(f"{records} {what} given for a world of size {size}")
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is outside the world of size {size}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the job key must be at least {MIN_KEY_BYTES} bytes")


def loopback_listeners(size: int, host: str = "127.0.0.1") -> list[socket.socket]:
    """One listening socket per rank on free ports of ``host``: a local world's endpoints."""
    return [socket.create_server((host, 0), backlog=max(size, 16)) for _ in range(size)]


class StoreLinks:
    """Every link through the object store, under ``prefix`` in ``bucket``."""

    def __init__(
        self,
        rank: int,
        storage: Storage,
        bucket: str,
        prefix: str,
        *,
        max_payload: int | None = None,
        poll_initial_s: float = DEFAULT_POLL_INITIAL,
        poll_max_s: float | None = None,
    ) -> None:
        self._rank = rank
        self.storage = storage
        self.bucket = bucket
        self.prefix = prefix
        self.max_payload = max_frame_bytes(max_payload)
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = CommSettings.from_env(store_poll_max_s=poll_max_s).store_poll_max_s

    @property
    def rank(self) -> int:
        return self._rank

    def link(self, peer: int, deadline: float) -> Channel:
        return StoreChannel(
            self.storage,
            self.bucket,
            self.prefix,
            rank=self._rank,
            peer=peer,
            max_payload=self.max_payload,
            poll_initial_s=self.poll_initial_s,
            poll_max_s=self.poll_max_s,
        )

    def close(self) -> None:
        pass  # nothing held between links


class FallbackLinks:
    """The primary's link when it can be made within ``link_deadline_s``, else the fallback's.

    Both ends must agree on the channel, and a deadline can expire at one end of a handshake
    but not at the other, so the decision belongs to one end only: the lower rank. It tries
    the primary within ``link_deadline_s``; on success it sends USE_PRIMARY over the new link,
    otherwise it closes any half-made link and sends USE_FALLBACK over the fallback channel.
    The higher rank keeps offering the primary link and looks for the verdict on both until
    the operation's deadline, then uses the channel the verdict names. Which channel each link
    got, and why, is in ``choices`` and ``reasons`` and in the log.

    The higher rank calls ``primary.link`` repeatedly with short deadlines, so a primary must
    let a later call pick up what an earlier one started (StaticTcpLinks does: its accepted
    links wait in a table).
    """

    def __init__(
        self,
        primary: LinkMaker,
        fallback: LinkMaker,
        *,
        link_deadline_s: float | None = None,
    ) -> None:
        if primary.rank != fallback.rank:
            raise ValueError(
                f"the primary acts for rank {primary.rank}, the fallback for rank {fallback.rank}"
            )
        link_deadline_s = CommSettings.from_env(link_deadline_s=link_deadline_s).link_deadline_s
        self.primary = primary
        self.fallback = fallback
        self.link_deadline_s = link_deadline_s
        #: The channel kind each peer's link got.
        self.choices: dict[int, str] = {}
        #: Why the primary was not used, per peer that fell back.
        self.reasons: dict[int, str] = {}

    @property
    def rank(self) -> int:
        return self.primary.rank

    def link(self, peer: int, deadline: float) -> Channel:
        channel = self._decide(peer, deadline) if self.rank < peer else self._follow(peer, deadline)
        self.choices[peer] = channel.kind
        if peer in self.reasons:
            logger.warning(
                "rank %d: link to rank %d uses the %s channel (direct link failed: %s)",
                self.rank,
                peer,
                channel.kind,
                self.reasons[peer],
            )
        return channel

    def _decide(self, peer: int, deadline: float) -> Channel:
        primary_deadline = min(deadline, time.monotonic() + self.link_deadline_s)
        try:
            channel = self.primary.link(peer, primary_deadline)
        except CommError as exc:
            self.reasons[peer] = str(exc)
        else:
            try:
                channel.send(FrameKind.CONTROL, LINK_DECISION_TAG, [USE_PRIMARY], deadline)
                return channel
            except CommError as exc:
                channel.close()
                self.reasons[peer] = f"the new link failed at once: {exc}"
        store = self.fallback.link(peer, deadline)
        store.send(FrameKind.CONTROL, LINK_DECISION_TAG, [USE_FALLBACK], deadline)
        return store

    def _follow(self, peer: int, deadline: float) -> Channel:
        candidate: Channel | None = None
        store = self.fallback.link(peer, deadline)
        step = 0.01
        last_error = "no direct link offered"
        while True:
            now = time.monotonic()
            if now >= deadline:
                if candidate is not None:
                    candidate.close()
                raise CommTimeoutError(
                    f"rank {peer} sent no verdict on its link to rank {self.rank} before the "
                    f"deadline ({last_error})",
                    peer=peer,
                )
            slice_end = min(deadline, now + step)
            step = min(step * 2, 0.25)
            if candidate is None:
                try:
                    candidate = self.primary.link(peer, slice_end)
                except CommError as exc:
                    last_error = str(exc)
            if candidate is not None:
                try:
                    verdict = candidate.recv(LINK_DECISION_TAG, slice_end)
                except CommTimeoutError:
                    pass
                except CommError as exc:
                    # The lower rank gave up on this link after our end completed it.
                    last_error = str(exc)
                    candidate.close()
                    candidate = None
                else:
                    if bytes(verdict.payload) == USE_PRIMARY:
                        return candidate
                    raise CommProtocolError(
                        f"rank {peer} sent an unknown link verdict {bytes(verdict.payload)!r}",
                        peer=peer,
                    )
            try:
                # A deadline in the past makes one look at the store, without waiting.
                verdict = store.recv(LINK_DECISION_TAG, 0.0)
            except CommTimeoutError:
                if candidate is None:
                    # The primary failed at once: wait out the slice instead of spinning.
                    time.sleep(max(0.0, slice_end - time.monotonic()))
                continue
            if bytes(verdict.payload) != USE_FALLBACK:
                raise CommProtocolError(
                    f"rank {peer} sent an unknown link verdict {bytes(verdict.payload)!r}",
                    peer=peer,
                )
            if candidate is not None:
                candidate.close()
            self.reasons[peer] = f"rank {peer} decided so: {last_error}"
            return store

    def close(self) -> None:
        self.primary.close()
        self.fallback.close()
