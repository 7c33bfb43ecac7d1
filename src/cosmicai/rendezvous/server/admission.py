"""Who may hold a connection: the caps on connections, in all and per source address, and the
budget of connections not yet authenticated. Pure bookkeeping, no sockets.

Every connection starts unauthenticated: a native one until its AUTH (or its preamble, on a
server without a secret), a TCPunch one for good (the protocol cannot authenticate). Those
share ``max_unauthenticated``; the rest of ``max_connections`` is only ever taken by
authenticated clients, so strangers cannot fill the server. When the budget is full, a newcomer
takes the place of the oldest unauthenticated connection of the source holding the most of them
(when that source holds at least as many as the newcomer's would): a stranger holding many
connections loses them first, and a worker connecting from another address always gets in to
send its AUTH.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Generic, TypeVar

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Verdict(Generic[C]):
    #: Why the newcomer is refused (a limit's name), or None when it is in.
    refused: str | None = None
    #: The unauthenticated connection the newcomer replaces: the caller drops it.
    evicted: C | None = None


class Admission(Generic[C]):
    def __init__(
        self,
        *,
        max_connections: int,
        max_per_source: int,
        max_unauthenticated: int,
        max_unauthenticated_per_source: int,
    ) -> None:
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.max_unauthenticated = max_unauthenticated
        self.max_unauthenticated_per_source = max_unauthenticated_per_source
        self._source: dict[C, str] = {}
        self._per_source: Counter[str] = Counter()
        #: Unauthenticated connections by source, oldest first.
        self._strangers: dict[str, dict[C, None]] = {}
        self.unauthenticated = 0

    def __len__(self) -> int:
        return len(self._source)

    def admit(self, conn: C, source: str) -> Verdict[C]:
        """Count ``conn`` (unauthenticated, from ``source``) in, or say why not."""
        if self._per_source[source] >= self.max_per_source:
            return Verdict("connections_per_address")
        strangers = self._strangers.get(source, {})
        if len(strangers) >= self.max_unauthenticated_per_source:
            return Verdict("unauthenticated_per_address")
        evicted = None
        if len(self._source) >= self.max_connections or (
            self.unauthenticated >= self.max_unauthenticated
        ):
            evicted = self._victim(len(strangers) + 1)
            if evicted is None:
                full = len(self._source) >= self.max_connections
                return Verdict("connections" if full else "unauthenticated")
            self.release(evicted)
        self._source[conn] = source
        self._per_source[source] += 1
        self._strangers.setdefault(source, {})[conn] = None
        self.unauthenticated += 1
        return Verdict(None, evicted)

    def authenticated(self, conn: C) -> None:
        """``conn`` has proved itself: it leaves the unauthenticated budget."""
        source = self._source.get(conn)
        if source is not None and self._forget_stranger(conn, source):
            self.unauthenticated -= 1

    def release(self, conn: C) -> None:
        """``conn`` is gone (closed or evicted); a second call does nothing."""
        source = self._source.pop(conn, None)
        if source is None:
            return
        left = self._per_source[source] - 1
        if left:
            self._per_source[source] = left
        else:
            del self._per_source[source]
        if self._forget_stranger(conn, source):
            self.unauthenticated -= 1

    def _forget_stranger(self, conn: C, source: str) -> bool:
        strangers = self._strangers.get(source)
        if strangers is None or conn not in strangers:
            return False
        del strangers[conn]
        if not strangers:
            del self._strangers[source]
        return True

    def _victim(self, newcomer_count: int) -> C | None:
        """The oldest unauthenticated connection of the source holding the most, if that is at
        least ``newcomer_count``."""
        if not self._strangers:
            return None
        heaviest = max(self._strangers.values(), key=len)
        if len(heaviest) < newcomer_count:
            return None
        return next(iter(heaviest))
