"""World registration: every rank of a job registers once; all get every rank's endpoints.

A world is created by its first registration, which also fixes its size and its deadline. When
the last rank arrives, every rank receives one WORLD frame (built once, the same bytes for all).
If the deadline passes first, every rank that did register receives WORLD_INCOMPLETE naming
the missing ranks. A finished job id is remembered for a while so that a late or retried rank
is told the world is over instead of silently starting a new one that can never fill.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from cosmicai.rendezvous.server.logs import log_event
from cosmicai.rendezvous.server.metrics import Metrics
from cosmicai.rendezvous.server.waiting import Refusal, Waiter, WaitingLimits
from cosmicai.rendezvous.wire.endpoint import Endpoint
from cosmicai.rendezvous.wire.messages import ErrorCode, PeerRecord, World, encode

#: How many missing ranks an incomplete-world error lists before summarising the rest.
MAX_LISTED_MISSING = 20


class WorldMember(Waiter, Protocol):
    def world_ready(self, frame: bytes) -> None:
        """Send the encoded WORLD frame."""

    def world_failed(self, code: ErrorCode, message: str) -> None:
        """Send an ERROR and close."""


@dataclass(slots=True)
class _Entry:
    member: WorldMember
    record: PeerRecord


@dataclass(slots=True)
class _World:
    job_id: str
    size: int
    deadline: float  # loop time
    entries: dict[int, _Entry] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None


class WorldRegistry:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limits: WaitingLimits,
        metrics: Metrics,
        *,
        max_world_size: int,
        max_deadline: float,
        finished_ttl: float = 600.0,
        max_finished: int = 10_000,
    ) -> None:
        self._loop = loop
        self._limits = limits
        self._metrics = metrics
        self.max_world_size = max_world_size
        self.max_deadline = max_deadline
        self._finished_ttl = finished_ttl
        self._max_finished = max_finished
        self._worlds: dict[str, _World] = {}
        self._finished: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._worlds)

    @property
    def registered(self) -> int:
        return sum(len(world.entries) for world in self._worlds.values())

    def join(
        self,
        job_id: str,
        world_size: int,
        rank: int,
        deadline: float,
        public: Endpoint,
        private: Endpoint | None,
        member: WorldMember,
    ) -> float:
        """Add ``member`` as ``rank``; the seconds left until the world's deadline.

        Raises ``Refusal`` naming what is wrong. Completion is scheduled, not done here, so the
        caller's ACCEPTED always goes out before the WORLD.
        """
        now = self._loop.time()
        self._forget_finished(now)
        if job_id in self._finished:
            outcome, when = self._finished[job_id]
            raise Refusal(
                ErrorCode.WORLD_CLOSED,
                f"world {job_id!r} already {outcome} {now - when:.0f} s ago; "
                "register a new attempt under a new job id",
            )
        if world_size < 1:
            raise Refusal(ErrorCode.INVALID_REQUEST, "world size must be at least 1")
        if rank >= world_size:
            raise Refusal(
                ErrorCode.RANK_OUT_OF_RANGE,
                f"rank {rank} is outside world {job_id!r} of size {world_size}",
            )
        world = self._worlds.get(job_id)
        if world is None:
            if world_size > self.max_world_size:
                raise Refusal(
                    ErrorCode.LIMIT_EXCEEDED,
                    f"world size {world_size} exceeds this server's limit of {self.max_world_size}",
                )
            self._limits.acquire(member.source)
            world = _World(job_id, world_size, now + min(deadline, self.max_deadline))
            world.timer = self._loop.call_at(world.deadline, self._expire, world)
            self._worlds[job_id] = world
            log_event(logging.INFO, "world_opened", job_id=job_id, world_size=world_size)
        else:
            if world.size != world_size:
                raise Refusal(
                    ErrorCode.WORLD_SIZE_MISMATCH,
                    f"world {job_id!r} has size {world.size}, not {world_size}",
                )
            existing = world.entries.get(rank)
            if existing is not None and existing.member.is_alive():
                raise Refusal(
                    ErrorCode.RANK_TAKEN,
                    f"rank {rank} of world {job_id!r} is already registered by "
                    f"{existing.record.public}",
                )
            self._limits.acquire(member.source)
            if existing is not None:
                del world.entries[rank]
                self._limits.release(existing.member.source)
                self._metrics.inc("dead_waiters_dropped_total", kind="world")
        world.entries[rank] = _Entry(member, PeerRecord(rank, public, private))
        if len(world.entries) == world.size:
            self._loop.call_soon(self._complete, world)
        return max(0.0, world.deadline - now)

    def leave(self, job_id: str, rank: int, member: WorldMember) -> bool:
        """Remove ``member``'s registration; an emptied world is forgotten with its deadline."""
        world = self._worlds.get(job_id)
        if world is None:
            return False
        entry = world.entries.get(rank)
        if entry is None or entry.member is not member:
            return False
        del world.entries[rank]
        self._limits.release(member.source)
        if not world.entries:
            self._discard(world)
        return True

    def close(self, message: str) -> None:
        """Fail every open world (at shutdown)."""
        for world in list(self._worlds.values()):
            self._end(world, "failed", ErrorCode.SHUTTING_DOWN, message, reason="shutdown")

    def _complete(self, world: _World) -> None:
        if self._worlds.get(world.job_id) is not world:
            return
        for rank, entry in list(world.entries.items()):
            if not entry.member.is_alive():
                del world.entries[rank]
                self._limits.release(entry.member.source)
                self._metrics.inc("dead_waiters_dropped_total", kind="world")
        if len(world.entries) != world.size:
            return  # a rank went away at the last moment; wait for it to come back
        records = tuple(world.entries[rank].record for rank in range(world.size))
        frame = encode(World(records))
        self._discard(world)
        self._remember(world.job_id, "completed")
        for entry in world.entries.values():
            self._limits.release(entry.member.source)
            entry.member.world_ready(frame)
        self._metrics.inc("worlds_completed_total")
        log_event(
            logging.INFO,
            "world_completed",
            job_id=world.job_id,
            world_size=world.size,
            frame_bytes=len(frame),
        )

    def _expire(self, world: _World) -> None:
        if self._worlds.get(world.job_id) is not world:
            return
        missing = [rank for rank in range(world.size) if rank not in world.entries]
        listed = ", ".join(str(rank) for rank in missing[:MAX_LISTED_MISSING])
        if len(missing) > MAX_LISTED_MISSING:
            listed += f" and {len(missing) - MAX_LISTED_MISSING} more"
        message = (
            f"world {world.job_id!r} incomplete at its deadline: {len(world.entries)} of "
            f"{world.size} ranks registered; missing rank(s) {listed}"
        )
        self._metrics.inc("timeouts_total", kind="world")
        self._end(world, "failed", ErrorCode.WORLD_INCOMPLETE, message, reason="deadline")

    def _end(
        self, world: _World, outcome: str, code: ErrorCode, message: str, *, reason: str
    ) -> None:
        self._discard(world)
        self._remember(world.job_id, outcome)
        for entry in world.entries.values():
            self._limits.release(entry.member.source)
            entry.member.world_failed(code, message)
        self._metrics.inc("worlds_failed_total", reason=reason)
        log_event(
            logging.WARNING,
            "world_failed",
            job_id=world.job_id,
            world_size=world.size,
            registered=len(world.entries),
            reason=reason,
        )

    def _discard(self, world: _World) -> None:
        del self._worlds[world.job_id]
        if world.timer is not None:
            world.timer.cancel()

    def _remember(self, job_id: str, outcome: str) -> None:
        self._finished[job_id] = (outcome, self._loop.time())
        self._finished.move_to_end(job_id)
        while len(self._finished) > self._max_finished:
            self._finished.popitem(last=False)

    def _forget_finished(self, now: float) -> None:
        finished = self._finished
        while finished:
            _, when = next(iter(finished.values()))
            if now - when <= self._finished_ttl:
                break
            finished.popitem(last=False)
