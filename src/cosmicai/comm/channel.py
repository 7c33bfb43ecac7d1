"""Channels: an ordered, reliable stream of frames between this rank and one peer.

One interface, two implementations: :class:`TcpChannel` over a connected (and already
authenticated) socket here, and ``StoreChannel`` over an object store in
:mod:`cosmicai.comm.store`. The communicator only ever talks to a :class:`Channel`, which is why
a result does not depend on how a link was made.

Messages are matched by tag in arrival order (MPI's non-overtaking rule): ``recv(tag)`` returns
the oldest frame with that tag, and frames with other tags that arrive meanwhile are kept until
someone asks for them.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import time
from collections.abc import Sequence
from typing import Protocol

from cosmicai.comm.frames import Frame, FrameAssembler, FrameKind, encode_header
from cosmicai.constants import DEFAULT_COMM_MAX_FRAME_BYTES
from cosmicai.exceptions import CommError, CommProtocolError, CommTimeoutError, PeerLostError

#: Matches any tag a user may send (>= 0); the communicator's own tags are negative.
ANY_TAG = -1

Bytes = bytes | bytearray | memoryview

# Reads land in a chunk of this size unless a large payload is being received, in which case
# they go straight into the payload (see FrameAssembler.window).
_CHUNK_BYTES = 256 * 1024
_DIRECT_READ_MIN = 64 * 1024
# Linux accepts 1024 buffers per sendmsg; we send a header and a few parts.
_IOV_BATCH = 64


def tag_matches(wanted: int, tag: int) -> bool:
    return tag == wanted or (wanted == ANY_TAG and tag >= 0)


class Channel(Protocol):
    """What the communicator needs of a link to one peer.

    ``deadline`` arguments are ``time.monotonic()`` instants. Errors are :class:`CommError`
    subclasses naming the peer: CommTimeoutError when the deadline passes, PeerLostError when
    the peer closed or died, CommProtocolError when it sent something out of protocol.
    """

    #: How the link is carried: ``"tcp"`` or ``"store"``; counted by the communicator.
    kind: str
    #: The rank at the other end.
    peer: int

    def send(self, kind: FrameKind, tag: int, parts: Sequence[Bytes], deadline: float) -> None:
        """Send one frame whose payload is the concatenation of ``parts``."""

    def recv(self, tag: int, deadline: float, into: memoryview | None = None) -> Frame:
        """The oldest frame with ``tag`` (ANY_TAG: any tag >= 0).

        With ``into``, a BUFFER frame of exactly ``into.nbytes`` bytes is written there and
        returned with ``claimed=True``; any other frame is returned as it came.
        """

    def exchange(
        self,
        kind: FrameKind,
        tag: int,
        parts: Sequence[Bytes],
        deadline: float,
        into: memoryview | None = None,
    ) -> Frame:
        """Send a frame and receive the peer's frame with the same tag, both at once.

        Both ends of a pairwise exchange send first; receiving while sending is what keeps
        two large sends from waiting on each other forever.
        """

    def close(self, reason: str = "") -> None:
        """Release the link. A non-empty ``reason`` (an abort) is sent to the peer as a CLOSE
        frame, so a peer waiting on this link fails at once with that reason instead of at
        its deadline; the TCP channel sends one in any case (it costs nothing there)."""


def deliver(frame: Frame, into: memoryview | None) -> Frame:
    """``frame``, with its payload copied into ``into`` when it fits there."""
    if into is None or frame.claimed:
        return frame
    if frame.kind is FrameKind.BUFFER and len(frame.payload) == into.nbytes:
        into[:] = memoryview(frame.payload).cast("B")
        return Frame(frame.kind, frame.tag, into, True)
    return frame


def close_reason(frame: Frame) -> str:
    return bytes(frame.payload).decode("utf-8", "replace") or "no reason given"


class TcpChannel:
    """A channel over a connected socket (already authenticated with the link handshake).

    The socket is switched to non-blocking mode and every wait goes through ``poll`` with the
    operation's deadline, so no call can block past it. While a send waits for room in the
    socket buffer it also reads whatever the peer sends (keeping it for later): two ranks that
    send each other large messages at the same time therefore never deadlock.
    """

    kind = "tcp"

    def __init__(
        self,
        sock: socket.socket,
        peer: int,
        *,
        max_payload: int = DEFAULT_COMM_MAX_FRAME_BYTES,
    ) -> None:
        self.peer = peer
        self._sock = sock
        sock.setblocking(False)
        # Frames are whole messages: Nagle's delay would only add latency. (A socketpair in a
        # test is not TCP and refuses the option.)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._fd = sock.fileno()
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLIN)
        self._assembler = FrameAssembler(max_payload)
        self._stash: list[Frame] = []
        self._chunk = memoryview(bytearray(_CHUNK_BYTES))
        self._eof = False
        self._peer_closed: str | None = None
        self._broken: CommError | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"TcpChannel(peer={self.peer})"

    # -- receiving ----------------------------------------------------------------------------

    def recv(self, tag: int, deadline: float, into: memoryview | None = None) -> Frame:
        self._check_usable()
        frame = self._take_stashed(tag)
        if frame is not None:
            return deliver(frame, into)
        if into is not None:
            self._set_claim(tag, into)
        return self._receive(tag, deadline, into)

    def _receive(self, tag: int, deadline: float, into: memoryview | None) -> Frame:
        """Wait for the first frame with ``tag`` (the claim, if any, is already set)."""
        try:
            while True:
                self._raise_if_gone(tag)
                self._keep(self._read(deadline, tag))
                # Frames are kept in arrival order, so the first match is the oldest.
                found = self._take_stashed(tag)
                if found is not None:
                    return deliver(found, into)
        finally:
            self._clear_claim()

    def exchange(
        self,
        kind: FrameKind,
        tag: int,
        parts: Sequence[Bytes],
        deadline: float,
        into: memoryview | None = None,
    ) -> Frame:
        self._check_usable()
        # Claim the peer's frame before sending, so what arrives during the send already lands
        # in ``into``; but never ahead of a matching frame that arrived earlier.
        if into is not None and not _found(self._stash, tag):
            self._set_claim(tag, into)
        try:
            self._send(kind, tag, parts, deadline)
        except BaseException:
            self._clear_claim()
            raise
        frame = self._take_stashed(tag)
        if frame is not None:
            # Arrived during the send (in ``into`` if it was claimed) or before it.
            self._clear_claim()
            return deliver(frame, into)
        return self._receive(tag, deadline, into)

    def _set_claim(self, tag: int, into: memoryview) -> None:
        assembler = self._assembler

        def claim(kind: FrameKind, frame_tag: int, length: int) -> memoryview | None:
            if not tag_matches(tag, frame_tag):
                return None
            # Only the first matching frame may land in the caller's buffer, right or wrong.
            assembler.claim = None
            if kind is FrameKind.BUFFER and length == into.nbytes:
                return into
            return None

        assembler.claim = claim

    def _clear_claim(self) -> None:
        self._assembler.claim = None
        if self._assembler.filling_claim:
            # A claimed payload is still arriving into a buffer its caller now owns again.
            self._broken = CommError(
                f"the link to rank {self.peer} stopped in the middle of a frame",
                peer=self.peer,
            )

    def _take_stashed(self, tag: int) -> Frame | None:
        for index, frame in enumerate(self._stash):
            if tag_matches(tag, frame.tag):
                return self._stash.pop(index)
        return None

    def _raise_if_gone(self, tag: int) -> None:
        if self._peer_closed is not None:
            raise PeerLostError(
                f"rank {self.peer} closed its link ({self._peer_closed}) and sent nothing "
                f"more with tag {tag}",
                peer=self.peer,
            )
        if self._eof:
            where = "" if self._assembler.at_boundary else " in the middle of a frame"
            raise PeerLostError(
                f"rank {self.peer} closed the connection{where} without a goodbye "
                "(its process may have died)",
                peer=self.peer,
            )

    def _read(self, deadline: float, tag: int) -> list[Frame]:
        """Frames completed by the next bytes from the socket (maybe none); waits for them."""
        # Between frames the next one has usually not arrived yet: poll first rather than
        # pay for a failed recv. In the middle of a payload, read first.
        if self._assembler.at_boundary:
            self._wait(select.POLLIN, deadline, f"waiting for a message with tag {tag}")
        while True:
            try:
                frames = self._read_once()
            except BlockingIOError:
                self._wait(select.POLLIN, deadline, f"waiting for a message with tag {tag}")
                continue
            if frames is None:
                self._eof = True
                return []
            return frames

    def _read_once(self) -> list[Frame] | None:
        """One recv: the frames it completes, or None at end of stream."""
        window = self._assembler.window()
        try:
            if window is not None and window.nbytes >= _DIRECT_READ_MIN:
                received = self._sock.recv_into(window)
                return self._assembler.advance(received) if received else None
            received = self._sock.recv_into(self._chunk)
        except (BlockingIOError, InterruptedError):
            raise BlockingIOError from None
        except OSError as exc:
            self._broken = PeerLostError(
                f"the link to rank {self.peer} failed: {exc}", peer=self.peer
            )
            raise self._broken from exc
        if not received:
            return None
        try:
            return self._assembler.feed(self._chunk[:received])
        except CommProtocolError as exc:
            self._broken = CommProtocolError(f"rank {self.peer}: {exc}", peer=self.peer)
            raise self._broken from exc

    def _drain(self) -> None:
        """Read what the peer has sent so far without waiting, keeping every frame."""
        while True:
            try:
                frames = self._read_once()
            except BlockingIOError:
                return
            if frames is None:
                self._eof = True
                return
            self._keep(frames)

    def _keep(self, frames: list[Frame]) -> None:
        for frame in frames:
            if frame.kind is FrameKind.CLOSE:
                self._peer_closed = close_reason(frame)
            else:
                self._stash.append(frame)

    # -- sending ------------------------------------------------------------------------------

    def send(self, kind: FrameKind, tag: int, parts: Sequence[Bytes], deadline: float) -> None:
        self._check_usable()
        self._send(kind, tag, parts, deadline)

    def _send(self, kind: FrameKind, tag: int, parts: Sequence[Bytes], deadline: float) -> None:
        views = [memoryview(part).cast("B") for part in parts]
        views = [view for view in views if view.nbytes]
        total = sum(view.nbytes for view in views)
        if total > self._assembler.max_payload:
            raise ValueError(
                f"a frame of {total} bytes exceeds the limit of {self._assembler.max_payload}"
            )
        pending = [memoryview(encode_header(kind, tag, total)), *views]
        started = False
        try:
            while pending:
                try:
                    sent = self._sock.sendmsg(pending[:_IOV_BATCH])
                except (BlockingIOError, InterruptedError):
                    sent = 0
                if sent:
                    started = True
                    pending = _advance(pending, sent)
                    continue
                events = self._wait(
                    select.POLLIN | select.POLLOUT, deadline, f"sending a message with tag {tag}"
                )
                if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    self._drain()
                    if self._eof and not events & select.POLLOUT:
                        self._raise_if_gone(tag)
        except CommTimeoutError as exc:
            if started:
                self._broken = CommError(
                    f"the link to rank {self.peer} stopped in the middle of a sent frame",
                    peer=self.peer,
                )
            raise exc
        except OSError as exc:
            self._broken = PeerLostError(
                f"rank {self.peer} is gone: sending failed: {exc}", peer=self.peer
            )
            raise self._broken from exc

    def _wait(self, events: int, deadline: float, doing: str) -> int:
        self._poller.modify(self._fd, events)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommTimeoutError(
                    f"rank {self.peer} did not answer before the deadline ({doing})",
                    peer=self.peer,
                )
            ready = self._poller.poll(math.ceil(remaining * 1000))
            if ready:
                return ready[0][1]

    # -- state --------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise CommError(f"the link to rank {self.peer} is closed", peer=self.peer)
        if self._broken is not None:
            raise CommError(
                f"the link to rank {self.peer} is unusable after an earlier error: {self._broken}",
                peer=self.peer,
            )

    def close(self, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        if self._broken is None and not self._eof:
            payload = (reason or "closed").encode()[:1024]
            # One non-blocking attempt: a goodbye must never hold up the closing rank.
            with contextlib.suppress(OSError):
                self._sock.sendmsg([encode_header(FrameKind.CLOSE, 0, len(payload)), payload])
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def _found(stash: list[Frame], tag: int) -> bool:
    return any(tag_matches(tag, frame.tag) for frame in stash)


def _advance(views: list[memoryview], count: int) -> list[memoryview]:
    """``views`` without their first ``count`` bytes."""
    index = 0
    while count and count >= views[index].nbytes:
        count -= views[index].nbytes
        index += 1
    rest = views[index:]
    if count:
        rest[0] = rest[0][count:]
    return rest
