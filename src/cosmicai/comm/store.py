"""The object-store channel: the same frames as a TCP link, one object per frame.

Used for a link that cannot be made directly (a symmetric NAT on the way) so the job still
finishes with the same results, only slower. Layout under the job's prefix::

    <prefix><sender>-<receiver>/<sequence, 12 digits>

Each direction of a link numbers its frames from 0. A sender writes frame ``n`` with one
atomic put (both Storage backends promise readers never see a partial object); the receiver
polls for frame ``n`` only, with exponential backoff up to the deadline, so it never lists the
prefix and never reads frames out of order. A frame is deleted once read, so a finished job
leaves nothing behind but the frames of ranks that died.

The prefix must be unique to one communicator (the job id and attempt in it): frames left by an
earlier attempt under the same prefix would otherwise be read as this one's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from cosmicai.comm.channel import Bytes, close_reason, deliver, tag_matches
from cosmicai.comm.frames import Frame, FrameKind, decode_frame, encode_header
from cosmicai.constants import DEFAULT_COMM_MAX_FRAME_BYTES, DEFAULT_COMM_STORE_POLL_MAX
from cosmicai.exceptions import (
    CommError,
    CommProtocolError,
    CommTimeoutError,
    ObjectNotFoundError,
    PeerLostError,
    StorageError,
)
from cosmicai.storage import Storage, as_prefix

logger = logging.getLogger(__name__)

DEFAULT_POLL_INITIAL = 0.001


def frame_key(prefix: str, sender: int, receiver: int, sequence: int) -> str:
    return f"{prefix}{sender}-{receiver}/{sequence:012d}"


class StoreChannel:
    """A channel to ``peer`` through ``storage`` (S3 or a local directory)."""

    kind = "store"

    def __init__(
        self,
        storage: Storage,
        bucket: str,
        prefix: str,
        *,
        rank: int,
        peer: int,
        max_payload: int = DEFAULT_COMM_MAX_FRAME_BYTES,
        poll_initial_s: float = DEFAULT_POLL_INITIAL,
        poll_max_s: float = DEFAULT_COMM_STORE_POLL_MAX,
    ) -> None:
        if rank == peer:
            raise ValueError(f"a channel needs two ranks, got rank {rank} twice")
        self.peer = peer
        self.rank = rank
        self.storage = storage
        self.bucket = bucket
        self.prefix = as_prefix(prefix)
        self.max_payload = max_payload
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = max(poll_max_s, poll_initial_s)
        self._sent = 0
        self._received = 0
        self._stash: list[Frame] = []
        self._peer_closed: str | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"StoreChannel(peer={self.peer}, {self.storage.description}/{self.bucket})"

    def send(self, kind: FrameKind, tag: int, parts: Sequence[Bytes], deadline: float) -> None:
        if self._closed:
            raise CommError(f"the link to rank {self.peer} is closed", peer=self.peer)
        self._put(kind, tag, parts)

    def _put(self, kind: FrameKind, tag: int, parts: Sequence[Bytes]) -> None:
        views = [memoryview(part).cast("B") for part in parts]
        total = sum(view.nbytes for view in views)
        if total > self.max_payload:
            raise ValueError(f"a frame of {total} bytes exceeds the limit of {self.max_payload}")
        # One object, so one copy of the payload: put takes a single buffer.
        data = b"".join([encode_header(kind, tag, total), *views])
        key = frame_key(self.prefix, self.rank, self.peer, self._sent)
        try:
            self.storage.put(self.bucket, key, data)
        except StorageError as exc:
            raise CommError(
                f"could not store a message for rank {self.peer} at {key}: {exc}", peer=self.peer
            ) from exc
        self._sent += 1

    def recv(self, tag: int, deadline: float, into: memoryview | None = None) -> Frame:
        if self._closed:
            raise CommError(f"the link to rank {self.peer} is closed", peer=self.peer)
        delay = self.poll_initial_s
        while True:
            frame = self._take_stashed(tag)
            if frame is not None:
                return deliver(frame, into)
            if self._peer_closed is not None:
                raise PeerLostError(
                    f"rank {self.peer} closed its link ({self._peer_closed}) and sent nothing "
                    f"more with tag {tag}",
                    peer=self.peer,
                )
            # Look first, then check the deadline: a deadline already past still gets one look.
            fetched = self._fetch_next()
            if fetched is not None:
                delay = self.poll_initial_s
                if fetched.kind is FrameKind.CLOSE:
                    self._peer_closed = close_reason(fetched)
                else:
                    self._stash.append(fetched)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommTimeoutError(
                    f"rank {self.peer} did not answer before the deadline (waiting for a "
                    f"message with tag {tag} at "
                    f"{frame_key(self.prefix, self.peer, self.rank, self._received)})",
                    peer=self.peer,
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, self.poll_max_s)

    def exchange(
        self,
        kind: FrameKind,
        tag: int,
        parts: Sequence[Bytes],
        deadline: float,
        into: memoryview | None = None,
    ) -> Frame:
        # A put never waits for the reader, so sending first cannot deadlock here.
        self.send(kind, tag, parts, deadline)
        return self.recv(tag, deadline, into)

    def _fetch_next(self) -> Frame | None:
        key = frame_key(self.prefix, self.peer, self.rank, self._received)
        try:
            data = self.storage.get(self.bucket, key)
        except ObjectNotFoundError:
            return None
        except StorageError as exc:
            raise CommError(
                f"could not read the message of rank {self.peer} at {key}: {exc}",
                peer=self.peer,
            ) from exc
        try:
            frame = decode_frame(data, self.max_payload)
        except CommProtocolError as exc:
            raise CommProtocolError(f"rank {self.peer}, {key}: {exc}", peer=self.peer) from exc
        self._received += 1
        try:
            self.storage.delete(self.bucket, key)
        except StorageError as exc:
            # The frame was read: a leftover object costs storage, not correctness.
            logger.warning("could not delete %s after reading it: %s", key, exc)
        return frame

    def _take_stashed(self, tag: int) -> Frame | None:
        for index, frame in enumerate(self._stash):
            if tag_matches(tag, frame.tag):
                return self._stash.pop(index)
        return None

    def close(self, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        if not reason:
            # A normal close leaves nothing behind: the peer is done with this link too.
            return
        try:
            self._put(FrameKind.CLOSE, 0, [reason.encode()[:1024]])
        except CommError as exc:
            logger.warning("could not leave a goodbye for rank %d: %s", self.peer, exc)
