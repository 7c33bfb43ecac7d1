"""Who talks to whom in the collective algorithms, for any world size.

Binomial trees (bcast, gather, scatter) work on *relative* ranks ``(rank - root) mod size`` so
any root is the tree's top. Reductions and the recursive-doubling collectives (allreduce,
allgather, barrier) first *fold* a world that is not a power of two: with ``pof2`` the largest
power of two not above ``size`` and ``rem = size - pof2``, each even rank below ``2 * rem``
hands its operand to the odd rank above it and sits out, leaving ``pof2`` participants whose
virtual ranks keep the rank order. That keeps every combination in rank order, which is what
makes floating-point results identical on every rank (MPICH uses the same fold).
"""

from __future__ import annotations

from dataclasses import dataclass


def lowbit(value: int) -> int:
    return value & -value


def binomial_parent(relative: int) -> int | None:
    """The relative rank a node receives from (bcast) or sends to (gather); None at the top."""
    return None if relative == 0 else relative - lowbit(relative)


def binomial_children(relative: int, size: int) -> list[int]:
    """Relative ranks of a node's children, largest subtree first."""
    limit = lowbit(relative) if relative else 1 << max(size - 1, 0).bit_length()
    children = []
    mask = limit >> 1
    while mask:
        if relative + mask < size:
            children.append(relative + mask)
        mask >>= 1
    return children


def subtree_size(relative: int, size: int) -> int:
    """How many relative ranks the subtree of ``relative`` covers (itself included)."""
    if relative == 0:
        return size
    return min(lowbit(relative), size - relative)


@dataclass(frozen=True)
class Fold:
    """The fold of a world of ``size`` ranks onto ``pof2`` participants."""

    size: int
    pof2: int
    rem: int

    @classmethod
    def of(cls, size: int) -> Fold:
        pof2 = 1 << (size.bit_length() - 1)
        return cls(size, pof2, size - pof2)

    def virtual(self, rank: int) -> int | None:
        """The participant number of ``rank``, or None for a rank that sits out."""
        if rank < 2 * self.rem:
            return rank // 2 if rank % 2 else None
        return rank - self.rem

    def real(self, virtual: int) -> int:
        return 2 * virtual + 1 if virtual < self.rem else virtual + self.rem

    def count(self, first: int, end: int) -> int:
        """How many ranks the participants ``first .. end - 1`` stand for."""
        return (end - first) + max(0, min(end, self.rem) - first)

    def partner(self, rank: int) -> int | None:
        """The rank a folded pair member exchanges with before and after the main phase."""
        if rank >= 2 * self.rem:
            return None
        return rank + 1 if rank % 2 == 0 else rank - 1
