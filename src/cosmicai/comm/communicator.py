"""The communicator: mpi4py's names and semantics over pluggable links.

Lowercase methods move Python objects (through :mod:`cosmicai.comm.serial`, never pickle);
capitalised ones move numpy buffers, filling the caller's arrays. Collectives must be called by
every rank in the same order (as in MPI); messages between two ranks are matched by tag in the
order they were sent.

Every operation has one deadline, ``deadline_s`` from its start, covering the links it makes and
every message it waits for. A failure (a deadline, a peer that died or closed, a peer out of
protocol) raises a :class:`CommError` subclass naming the operation and the peer, and is fatal
to the communicator, as MPI errors are: its links are closed with the reason, so peers blocked
on this rank fail at once instead of waiting for their own deadlines, and later calls raise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from cosmicai.comm import serial
from cosmicai.comm.channel import ANY_TAG, Bytes, Channel, tag_matches
from cosmicai.comm.frames import MAX_TAG, Frame, FrameKind
from cosmicai.comm.links import LinkMaker
from cosmicai.comm.ops import SUM, ReduceOp, combine_into
from cosmicai.comm.settings import CommSettings
from cosmicai.comm.topology import Fold, binomial_children, binomial_parent, subtree_size
from cosmicai.exceptions import CommError, CommProtocolError

logger = logging.getLogger(__name__)

# The communicator's own tags are negative so they never meet a user's.
TAG_BCAST = -2
TAG_REDUCE = -3
TAG_ALLREDUCE = -4
TAG_GATHER = -5
TAG_SCATTER = -6
TAG_ALLGATHER = -7
TAG_SCAN = -8
TAG_BARRIER = -9


@dataclass(frozen=True)
class LinkStats:
    """The links a communicator has made so far."""

    #: Number of links (edges to distinct peers) made.
    links: int
    #: Links per channel kind, e.g. ``{"tcp": 3, "store": 1}``.
    by_kind: dict[str, int]
    #: The channel kind of each linked peer.
    peers: dict[int, str]
    #: Seconds each link took to make.
    setup_seconds: dict[int, float]


def _annotate(error: CommError, operation: str, rank: int) -> CommError:
    return type(error)(f"{operation} on rank {rank}: {error}", peer=error.peer, operation=operation)


def _byte_view(array: object, what: str, *, writable: bool = False) -> memoryview:
    """The bytes of a C-contiguous numpy array, without a copy."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(array).__qualname__}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (see numpy.ascontiguousarray)")
    if writable and not array.flags.writeable:
        raise ValueError(f"{what} must be writable")
    return memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def _check_same(sendbuf: np.ndarray, recvbuf: object, what: str, count: int = 1) -> np.ndarray:
    if not isinstance(recvbuf, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(recvbuf).__qualname__}")
    if recvbuf.dtype != sendbuf.dtype or recvbuf.size != sendbuf.size * count:
        raise ValueError(
            f"{what} holds {recvbuf.size} elements of {recvbuf.dtype}; "
            f"{sendbuf.size * count} of {sendbuf.dtype} are needed"
        )
    return recvbuf


class Communicator:
    """Rank ``rank`` of a world of ``size`` ranks, linked by ``link_maker``.

    Links are made the first time an algorithm needs an edge and reused afterwards. The
    communicator owns ``link_maker`` and closes it in :meth:`close`.
    """

    def __init__(
        self,
        rank: int,
        size: int,
        link_maker: LinkMaker,
        *,
        deadline_s: float | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"a world has at least one rank, not {size}")
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is outside the world of size {size}")
        if link_maker.rank != rank:
            raise ValueError(f"the link maker acts for rank {link_maker.rank}, not {rank}")
        deadline_s = CommSettings.from_env(deadline_s=deadline_s).deadline_s
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be positive, not {deadline_s}")
        self.rank = rank
        self.size = size
        self.deadline_s = deadline_s
        self._link_maker = link_maker
        self._channels: dict[int, Channel] = {}
        self._setup_seconds: dict[int, float] = {}
        self._to_self: list[Frame] = []
        self._failure: CommError | None = None
        self._closed = False

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size})"

    # -- links and plumbing -------------------------------------------------------------------

    def link_stats(self) -> LinkStats:
        peers = {peer: channel.kind for peer, channel in sorted(self._channels.items())}
        by_kind: dict[str, int] = {}
        for kind in peers.values():
            by_kind[kind] = by_kind.get(kind, 0) + 1
        return LinkStats(len(peers), by_kind, peers, dict(self._setup_seconds))

    def _channel(self, peer: int, deadline: float) -> Channel:
        channel = self._channels.get(peer)
        if channel is None:
            started = time.monotonic()
            channel = self._link_maker.link(peer, deadline)
            elapsed = time.monotonic() - started
            self._channels[peer] = channel
            self._setup_seconds[peer] = elapsed
            logger.info(
                "rank %d linked to rank %d over %s in %.1f ms",
                self.rank,
                peer,
                channel.kind,
                elapsed * 1000,
            )
        return channel

    @contextmanager
    def _operation(self, name: str) -> Iterator[float]:
        if self._closed:
            raise CommError(f"{name} on rank {self.rank}: the communicator is closed")
        if self._failure is not None:
            raise CommError(
                f"{name} on rank {self.rank}: the communicator is unusable after an earlier "
                f"failure: {self._failure}",
                operation=name,
            )
        try:
            yield time.monotonic() + self.deadline_s
        except CommError as exc:
            error = exc if exc.operation is not None else _annotate(exc, name, self.rank)
            self._abort(error)
            if error is exc:
                raise
            raise error from exc

    def _abort(self, error: CommError) -> None:
        self._failure = error
        reason = f"rank {self.rank} aborted: {error}"
        for channel in self._channels.values():
            channel.close(reason)

    def _send(self, peer: int, tag: int, payload: Bytes, deadline: float) -> None:
        self._channel(peer, deadline).send(FrameKind.OBJECT, tag, [payload], deadline)

    def _recv(self, peer: int, tag: int, deadline: float) -> Bytes:
        frame = self._channel(peer, deadline).recv(tag, deadline)
        self._expect(frame, FrameKind.OBJECT, peer)
        return frame.payload

    def _exchange(self, peer: int, tag: int, payload: Bytes, deadline: float) -> Bytes:
        frame = self._channel(peer, deadline).exchange(FrameKind.OBJECT, tag, [payload], deadline)
        self._expect(frame, FrameKind.OBJECT, peer)
        return frame.payload

    def _send_buffer(self, peer: int, tag: int, view: memoryview, deadline: float) -> None:
        self._channel(peer, deadline).send(FrameKind.BUFFER, tag, [view], deadline)

    def _recv_buffer(self, peer: int, tag: int, into: memoryview, deadline: float) -> None:
        frame = self._channel(peer, deadline).recv(tag, deadline, into)
        self._expect_buffer(frame, into, peer)

    def _exchange_buffer(
        self, peer: int, tag: int, view: memoryview, into: memoryview, deadline: float
    ) -> None:
        channel = self._channel(peer, deadline)
        frame = channel.exchange(FrameKind.BUFFER, tag, [view], deadline, into)
        self._expect_buffer(frame, into, peer)

    @staticmethod
    def _expect(frame: Frame, kind: FrameKind, peer: int) -> None:
        if frame.kind is not kind:
            sent = (
                "a numpy buffer (Send/Bcast/...)"
                if frame.kind is FrameKind.BUFFER
                else ("a Python object (send/bcast/...)")
            )
            wanted = "a Python object" if kind is FrameKind.OBJECT else "a numpy buffer"
            raise CommProtocolError(
                f"rank {peer} sent {sent} with tag {frame.tag} where this rank expected {wanted}",
                peer=peer,
            )

    def _expect_buffer(self, frame: Frame, into: memoryview, peer: int) -> None:
        self._expect(frame, FrameKind.BUFFER, peer)
        if not frame.claimed:
            raise CommProtocolError(
                f"rank {peer} sent {len(frame.payload)} bytes with tag {frame.tag}; the receive "
                f"buffer holds {into.nbytes}",
                peer=peer,
            )

    @staticmethod
    def _decode(payload: Bytes, peer: int) -> Any:
        try:
            return serial.loads(payload)
        except CommProtocolError as exc:
            raise CommProtocolError(
                f"rank {peer} sent a malformed message: {exc}", peer=peer
            ) from exc

    def _decode_blocks(self, payload: Bytes, count: int, peer: int) -> list[bytes]:
        """A list of ``count`` encoded objects, as gather, scatter and allgather forward them."""
        blocks = self._decode(payload, peer)
        if (
            not isinstance(blocks, list)
            or len(blocks) != count
            or not all(isinstance(block, bytes) for block in blocks)
        ):
            raise CommProtocolError(
                f"rank {peer} sent a malformed block list (expected {count} encoded objects)",
                peer=peer,
            )
        return blocks

    def _check_rank(self, rank: int, what: str) -> None:
        if not isinstance(rank, int) or not 0 <= rank < self.size:
            raise ValueError(f"{what} {rank!r} is not a rank of this world (size {self.size})")

    @staticmethod
    def _check_tag(tag: int, *, receiving: bool = False) -> None:
        if receiving and tag == ANY_TAG:
            return
        if not isinstance(tag, int) or not 0 <= tag <= MAX_TAG:
            raise ValueError(f"tag {tag!r} must be an int from 0 to {MAX_TAG}")

    def _take_from_self(self, tag: int, operation: str) -> Frame:
        for index, frame in enumerate(self._to_self):
            if tag_matches(tag, frame.tag):
                return self._to_self.pop(index)
        # Nothing can arrive later: only this rank sends to itself, and it is here.
        raise CommError(
            f"{operation} on rank {self.rank}: no message from this rank to itself with tag {tag}",
            peer=self.rank,
            operation=operation,
        )

    # -- point to point -----------------------------------------------------------------------

    def send(self, obj: object, dest: int, tag: int = 0) -> None:
        """Send ``obj`` to rank ``dest``; returns once it is on its way (buffered)."""
        self._check_rank(dest, "dest")
        self._check_tag(tag)
        payload = serial.dumps(obj)
        with self._operation("send") as deadline:
            if dest == self.rank:
                self._to_self.append(Frame(FrameKind.OBJECT, tag, payload))
                return
            self._send(dest, tag, payload, deadline)

    def recv(self, source: int, tag: int = ANY_TAG) -> Any:
        """The next object from rank ``source`` with ``tag`` (ANY_TAG: any user tag)."""
        self._check_rank(source, "source")
        self._check_tag(tag, receiving=True)
        with self._operation("recv") as deadline:
            if source == self.rank:
                frame = self._take_from_self(tag, "recv")
                self._expect(frame, FrameKind.OBJECT, source)
                return self._decode(frame.payload, source)
            return self._decode(self._recv(source, tag, deadline), source)

    def Send(self, buf: np.ndarray, dest: int, tag: int = 0) -> None:
        """Send the bytes of a C-contiguous numpy array to rank ``dest``."""
        self._check_rank(dest, "dest")
        self._check_tag(tag)
        view = _byte_view(buf, "buf")
        with self._operation("Send") as deadline:
            if dest == self.rank:
                self._to_self.append(Frame(FrameKind.BUFFER, tag, bytes(view)))
                return
            self._send_buffer(dest, tag, view, deadline)

    def Recv(self, buf: np.ndarray, source: int, tag: int = ANY_TAG) -> None:
        """Receive into ``buf`` the bytes rank ``source`` sent with ``Send``; sizes must match."""
        self._check_rank(source, "source")
        self._check_tag(tag, receiving=True)
        into = _byte_view(buf, "buf", writable=True)
        with self._operation("Recv") as deadline:
            if source == self.rank:
                frame = self._take_from_self(tag, "Recv")
                if frame.kind is FrameKind.BUFFER and len(frame.payload) == into.nbytes:
                    into[:] = frame.payload
                    frame = Frame(frame.kind, frame.tag, into, True)
                self._expect_buffer(frame, into, source)
                return
            self._recv_buffer(source, tag, into, deadline)

    # -- collectives on Python objects -------------------------------------------------------

    def barrier(self) -> None:
        """Return only once every rank has called barrier (recursive doubling)."""
        with self._operation("barrier") as deadline:
            fold = Fold.of(self.size)
            partner = fold.partner(self.rank)
            virtual = fold.virtual(self.rank)
            if virtual is None:
                assert partner is not None
                self._send(partner, TAG_BARRIER, b"", deadline)
                self._recv(partner, TAG_BARRIER, deadline)
                return
            if partner is not None:
                self._recv(partner, TAG_BARRIER, deadline)
            mask = 1
            while mask < fold.pof2:
                self._exchange(fold.real(virtual ^ mask), TAG_BARRIER, b"", deadline)
                mask <<= 1
            if partner is not None:
                self._send(partner, TAG_BARRIER, b"", deadline)

    def Barrier(self) -> None:
        self.barrier()

    def bcast(self, obj: object = None, root: int = 0) -> Any:
        """``obj`` of rank ``root``, on every rank (binomial tree; encoded once, forwarded)."""
        self._check_rank(root, "root")
        payload: Bytes = serial.dumps(obj) if self.rank == root else b""
        with self._operation("bcast") as deadline:
            relative = (self.rank - root) % self.size
            parent = binomial_parent(relative)
            source = root
            if parent is not None:
                source = (parent + root) % self.size
                payload = self._recv(source, TAG_BCAST, deadline)
            for child in binomial_children(relative, self.size):
                self._send((child + root) % self.size, TAG_BCAST, payload, deadline)
            return obj if parent is None else self._decode(payload, source)

    def gather(self, obj: object, root: int = 0) -> list[Any] | None:
        """The objects of every rank, in rank order, on ``root``; None elsewhere."""
        self._check_rank(root, "root")
        blocks: list[Bytes] = [serial.dumps(obj)]
        size = self.size
        with self._operation("gather") as deadline:
            relative = (self.rank - root) % size
            mask = 1
            while mask < size:
                if relative & mask:
                    parent = (relative - mask + root) % size
                    self._send(parent, TAG_GATHER, serial.dumps(blocks), deadline)
                    return None
                child = relative + mask
                if child < size:
                    peer = (child + root) % size
                    payload = self._recv(peer, TAG_GATHER, deadline)
                    blocks.extend(self._decode_blocks(payload, subtree_size(child, size), peer))
                mask <<= 1
            # blocks[i] came from relative rank i, that is from rank (i + root) % size.
            return [self._decode(blocks[(rank - root) % size], rank) for rank in range(size)]

    def scatter(self, objs: Sequence[Any] | None = None, root: int = 0) -> Any:
        """Item ``rank`` of ``objs`` (given on ``root``), on every rank."""
        self._check_rank(root, "root")
        size = self.size
        blocks: list[Bytes] = []
        if self.rank == root:
            if objs is None or not isinstance(objs, list | tuple) or len(objs) != size:
                given = "nothing" if objs is None else f"{type(objs).__qualname__}"
                if isinstance(objs, list | tuple):
                    given = f"{len(objs)} items"
                raise ValueError(f"scatter needs a list of {size} items on the root, got {given}")
            blocks = [serial.dumps(objs[(relative + root) % size]) for relative in range(size)]
        with self._operation("scatter") as deadline:
            relative = (self.rank - root) % size
            parent = binomial_parent(relative)
            if parent is not None:
                source = (parent + root) % size
                payload = self._recv(source, TAG_SCATTER, deadline)
                blocks = list(self._decode_blocks(payload, subtree_size(relative, size), source))
            for child in binomial_children(relative, size):
                offset = child - relative
                part = blocks[offset : offset + subtree_size(child, size)]
                self._send((child + root) % size, TAG_SCATTER, serial.dumps(part), deadline)
            if parent is None:
                assert objs is not None
                return objs[root]
            return self._decode(blocks[0], source)

    def reduce(self, obj: Any, op: ReduceOp = SUM, root: int = 0) -> Any:
        """``op`` over every rank's ``obj`` in rank order, on ``root``; None elsewhere.

        Combines in the same order as :meth:`allreduce`, so both give identical results.
        """
        self._check_rank(root, "root")
        with self._operation("reduce") as deadline:
            fold = Fold.of(self.size)
            holder = fold.real(0)
            value = self._fold_and_reduce(obj, op, fold, deadline)
            if holder == root:
                return value if self.rank == root else None
            if self.rank == holder:
                self._send(root, TAG_REDUCE, serial.dumps(value), deadline)
            elif self.rank == root:
                return self._decode(self._recv(holder, TAG_REDUCE, deadline), holder)
            return None

    def _fold_and_reduce(self, obj: Any, op: ReduceOp, fold: Fold, deadline: float) -> Any:
        """The reduction on ``fold.real(0)``; None on every other rank."""
        partner = fold.partner(self.rank)
        virtual = fold.virtual(self.rank)
        if virtual is None:
            assert partner is not None
            self._send(partner, TAG_REDUCE, serial.dumps(obj), deadline)
            return None
        value = obj
        if partner is not None:
            value = op(self._decode(self._recv(partner, TAG_REDUCE, deadline), partner), value)
        mask = 1
        while mask < fold.pof2:
            if virtual & mask:
                self._send(fold.real(virtual - mask), TAG_REDUCE, serial.dumps(value), deadline)
                return None
            peer = fold.real(virtual | mask)
            value = op(value, self._decode(self._recv(peer, TAG_REDUCE, deadline), peer))
            mask <<= 1
        return value

    def allreduce(self, obj: Any, op: ReduceOp = SUM) -> Any:
        """``op`` over every rank's ``obj`` in rank order, on every rank (recursive doubling)."""
        with self._operation("allreduce") as deadline:
            fold = Fold.of(self.size)
            partner = fold.partner(self.rank)
            virtual = fold.virtual(self.rank)
            if virtual is None:
                assert partner is not None
                self._send(partner, TAG_ALLREDUCE, serial.dumps(obj), deadline)
                return self._decode(self._recv(partner, TAG_ALLREDUCE, deadline), partner)
            value = obj
            if partner is not None:
                left = self._decode(self._recv(partner, TAG_ALLREDUCE, deadline), partner)
                value = op(left, value)
            mask = 1
            while mask < fold.pof2:
                other_virtual = virtual ^ mask
                peer = fold.real(other_virtual)
                payload = self._exchange(peer, TAG_ALLREDUCE, serial.dumps(value), deadline)
                other = self._decode(payload, peer)
                # Lower block on the left on both ends: both compute the same expression.
                value = op(other, value) if other_virtual < virtual else op(value, other)
                mask <<= 1
            if partner is not None:
                self._send(partner, TAG_ALLREDUCE, serial.dumps(value), deadline)
            return value

    def allgather(self, obj: object) -> list[Any]:
        """The objects of every rank, in rank order, on every rank (recursive doubling)."""
        size = self.size
        blob = serial.dumps(obj)
        with self._operation("allgather") as deadline:
            fold = Fold.of(size)
            partner = fold.partner(self.rank)
            virtual = fold.virtual(self.rank)
            blocks: list[Bytes]
            if virtual is None:
                assert partner is not None
                self._send(partner, TAG_ALLGATHER, blob, deadline)
                payload = self._recv(partner, TAG_ALLGATHER, deadline)
                blocks = list(self._decode_blocks(payload, size, partner))
            else:
                blocks = [blob]
                if partner is not None:
                    blocks.insert(0, self._recv(partner, TAG_ALLGATHER, deadline))
                mask = 1
                while mask < fold.pof2:
                    other_virtual = virtual ^ mask
                    peer = fold.real(other_virtual)
                    payload = self._exchange(peer, TAG_ALLGATHER, serial.dumps(blocks), deadline)
                    first = other_virtual & ~(mask - 1)
                    count = fold.count(first, first + mask)
                    other = self._decode_blocks(payload, count, peer)
                    blocks = [*other, *blocks] if other_virtual < virtual else [*blocks, *other]
                    mask <<= 1
                if partner is not None:
                    self._send(partner, TAG_ALLGATHER, serial.dumps(blocks), deadline)
            return [self._decode(block, rank) for rank, block in enumerate(blocks)]

    def scan(self, obj: Any, op: ReduceOp = SUM) -> Any:
        """``op`` over the objects of ranks 0..rank, in rank order (recursive doubling)."""
        with self._operation("scan") as deadline:
            value = obj
            distance = 1
            while distance < self.size:
                # Send what this rank held before this step, then take in the lower ranks'.
                if self.rank + distance < self.size:
                    self._send(self.rank + distance, TAG_SCAN, serial.dumps(value), deadline)
                if self.rank - distance >= 0:
                    peer = self.rank - distance
                    value = op(self._decode(self._recv(peer, TAG_SCAN, deadline), peer), value)
                distance <<= 1
            return value

    # -- collectives on numpy buffers ---------------------------------------------------------

    def Bcast(self, buf: np.ndarray, root: int = 0) -> None:
        """Fill ``buf`` on every rank with the contents of ``buf`` on ``root``."""
        self._check_rank(root, "root")
        view = _byte_view(buf, "buf", writable=self.rank != root)
        with self._operation("Bcast") as deadline:
            relative = (self.rank - root) % self.size
            parent = binomial_parent(relative)
            if parent is not None:
                self._recv_buffer((parent + root) % self.size, TAG_BCAST, view, deadline)
            for child in binomial_children(relative, self.size):
                self._send_buffer((child + root) % self.size, TAG_BCAST, view, deadline)

    def Reduce(
        self,
        sendbuf: np.ndarray,
        recvbuf: np.ndarray | None,
        op: ReduceOp = SUM,
        root: int = 0,
    ) -> None:
        """``op`` elementwise over every rank's ``sendbuf``, into ``recvbuf`` on ``root``."""
        self._check_rank(root, "root")
        _byte_view(sendbuf, "sendbuf")
        into: memoryview | None = None
        if self.rank == root:
            into = _byte_view(_check_same(sendbuf, recvbuf, "recvbuf"), "recvbuf", writable=True)
        with self._operation("Reduce") as deadline:
            fold = Fold.of(self.size)
            holder = fold.real(0)
            value = self._fold_and_reduce_buffer(sendbuf, op, fold, deadline)
            if self.rank == holder and holder == root:
                assert into is not None and value is not None
                into[:] = _byte_view(value, "result")
            elif self.rank == holder:
                assert value is not None
                self._send_buffer(root, TAG_REDUCE, _byte_view(value, "result"), deadline)
            elif self.rank == root:
                assert into is not None
                self._recv_buffer(holder, TAG_REDUCE, into, deadline)

    def _fold_and_reduce_buffer(
        self, sendbuf: np.ndarray, op: ReduceOp, fold: Fold, deadline: float
    ) -> np.ndarray | None:
        partner = fold.partner(self.rank)
        virtual = fold.virtual(self.rank)
        if virtual is None:
            assert partner is not None
            self._send_buffer(partner, TAG_REDUCE, _byte_view(sendbuf, "sendbuf"), deadline)
            return None
        value = sendbuf.copy()
        incoming = np.empty_like(value)
        incoming_view = _byte_view(incoming, "scratch", writable=True)
        if partner is not None:
            self._recv_buffer(partner, TAG_REDUCE, incoming_view, deadline)
            combine_into(op, incoming, value, value)
        mask = 1
        while mask < fold.pof2:
            if virtual & mask:
                peer = fold.real(virtual - mask)
                self._send_buffer(peer, TAG_REDUCE, _byte_view(value, "value"), deadline)
                return None
            self._recv_buffer(fold.real(virtual | mask), TAG_REDUCE, incoming_view, deadline)
            combine_into(op, value, incoming, value)
            mask <<= 1
        return value

    def Allreduce(self, sendbuf: np.ndarray, recvbuf: np.ndarray, op: ReduceOp = SUM) -> None:
        """``op`` elementwise over every rank's ``sendbuf``, into ``recvbuf`` on every rank.

        ``recvbuf`` may be ``sendbuf`` itself (in place).
        """
        _byte_view(sendbuf, "sendbuf")
        _check_same(sendbuf, recvbuf, "recvbuf")
        result_view = _byte_view(recvbuf, "recvbuf", writable=True)
        # Work in recvbuf itself, shaped like sendbuf (a view: both are contiguous).
        value = recvbuf.reshape(sendbuf.shape)
        if recvbuf is not sendbuf:
            np.copyto(value, sendbuf)
        with self._operation("Allreduce") as deadline:
            fold = Fold.of(self.size)
            partner = fold.partner(self.rank)
            virtual = fold.virtual(self.rank)
            if virtual is None:
                assert partner is not None
                self._send_buffer(partner, TAG_ALLREDUCE, result_view, deadline)
                self._recv_buffer(partner, TAG_ALLREDUCE, result_view, deadline)
                return
            incoming = np.empty_like(value)
            incoming_view = _byte_view(incoming, "scratch", writable=True)
            if partner is not None:
                self._recv_buffer(partner, TAG_ALLREDUCE, incoming_view, deadline)
                combine_into(op, incoming, value, value)
            mask = 1
            while mask < fold.pof2:
                other_virtual = virtual ^ mask
                peer = fold.real(other_virtual)
                self._exchange_buffer(peer, TAG_ALLREDUCE, result_view, incoming_view, deadline)
                if other_virtual < virtual:
                    combine_into(op, incoming, value, value)
                else:
                    combine_into(op, value, incoming, value)
                mask <<= 1
            if partner is not None:
                self._send_buffer(partner, TAG_ALLREDUCE, result_view, deadline)

    def Gather(self, sendbuf: np.ndarray, recvbuf: np.ndarray | None, root: int = 0) -> None:
        """Every rank's ``sendbuf``, in rank order, into ``recvbuf`` on ``root``.

        ``recvbuf`` holds ``size`` times ``sendbuf``'s elements, e.g. shape ``(size, *shape)``.
        """
        self._check_rank(root, "root")
        size = self.size
        own = _byte_view(sendbuf, "sendbuf")
        block = own.nbytes
        result: memoryview | None = None
        if self.rank == root:
            checked = _check_same(sendbuf, recvbuf, "recvbuf", count=size)
            result = _byte_view(checked, "recvbuf", writable=True)
        with self._operation("Gather") as deadline:
            relative = (self.rank - root) % size
            covered = subtree_size(relative, size)
            # Blocks are collected in relative-rank order; root 0's order is the final one.
            staging: memoryview | None = None
            if relative == 0 and root == 0:
                staging = result
            elif covered > 1:
                staging = memoryview(bytearray(covered * block))
            if staging is not None:
                staging[:block] = own
            mask = 1
            while mask < size:
                if relative & mask:
                    parent = (relative - mask + root) % size
                    outgoing = own if staging is None else staging[: covered * block]
                    self._send_buffer(parent, TAG_GATHER, outgoing, deadline)
                    return
                child = relative + mask
                if child < size:
                    assert staging is not None
                    span = staging[mask * block : (mask + subtree_size(child, size)) * block]
                    self._recv_buffer((child + root) % size, TAG_GATHER, span, deadline)
                mask <<= 1
            if root != 0:
                assert result is not None and staging is not None
                # Relative rank i is rank (i + root) % size: rotate into rank order.
                tail = (size - root) * block
                result[root * block :] = staging[:tail]
                result[: root * block] = staging[tail:]

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close every link and the link maker; the communicator cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        for channel in self._channels.values():
            channel.close()
        self._link_maker.close()

    def __enter__(self) -> Communicator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
