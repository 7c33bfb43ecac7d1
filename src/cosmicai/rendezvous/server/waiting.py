"""Who is waiting: the limits on waiting entries, and pairing by name.

Pure bookkeeping, no sockets: a connection puts an entry here and takes it out when it leaves,
closes or times out. An entry that is no longer alive (its socket is closing) is never handed
out as a partner, whatever the order in which the event loop delivers the news.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from cosmicai.rendezvous.wire.messages import ErrorCode


class Refusal(Exception):
    """A request the server turns down; becomes an ERROR frame (or a closed TCPunch socket)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Waiter(Protocol):
    """What the bookkeeping needs to know about a waiting connection."""

    @property
    def source(self) -> str:
        """The IP address the connection comes from."""
        ...

    def is_alive(self) -> bool: ...


class WaitingLimits:
    """Caps waiting entries in all and per source address (both protocols, pairs and worlds)."""

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self._per_address: Counter[str] = Counter()

    def acquire(self, address: str) -> None:
        if self.total >= self.max_total:
            raise Refusal(
                ErrorCode.LIMIT_EXCEEDED,
                f"the server already holds {self.max_total} waiting entries (its limit)",
            )
        if self._per_address[address] >= self.max_per_address:
            raise Refusal(
                ErrorCode.LIMIT_EXCEEDED,
                f"{address} already has {self.max_per_address} waiting entries (the limit per "
                "source address)",
            )
        self.total += 1
        self._per_address[address] += 1

    def release(self, address: str) -> None:
        self.total -= 1
        left = self._per_address[address] - 1
        if left > 0:
            self._per_address[address] = left
        else:
            del self._per_address[address]

    def waiting_from(self, address: str) -> int:
        return self._per_address.get(address, 0)


W = TypeVar("W", bound=Waiter)
Name = TypeVar("Name", bytes, str)


class PairingBoard(Generic[Name, W]):
    """At most one waiting entry per pairing name; the next live arrival takes it."""

    def __init__(
        self, limits: WaitingLimits, on_dead_dropped: Callable[[], None] | None = None
    ) -> None:
        self._limits = limits
        self._waiting: dict[Name, W] = {}
        #: Called for a waiter found dead when a partner arrived (its close not yet processed).
        self._on_dead_dropped = on_dead_dropped

    def __len__(self) -> int:
        return len(self._waiting)

    def offer(self, name: Name, entry: W) -> W | None:
        """The live partner waiting under ``name`` (now removed), or None once ``entry`` waits.

        Raises ``Refusal`` when ``entry`` would have to wait but a limit is reached.
        """
        partner = self._waiting.pop(name, None)
        if partner is not None:
            self._limits.release(partner.source)
            if partner.is_alive():
                return partner
            if self._on_dead_dropped is not None:
                self._on_dead_dropped()
        self._limits.acquire(entry.source)
        self._waiting[name] = entry
        return None

    def withdraw(self, name: Name, entry: W) -> bool:
        """Remove ``entry`` if it is still the one waiting under ``name``."""
        if self._waiting.get(name) is entry:
            del self._waiting[name]
            self._limits.release(entry.source)
            return True
        return False

    def drain(self) -> list[W]:
        """Remove and return every waiting entry (at shutdown)."""
        entries = list(self._waiting.values())
        for entry in entries:
            self._limits.release(entry.source)
        self._waiting.clear()
        return entries
