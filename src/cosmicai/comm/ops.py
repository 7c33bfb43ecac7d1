"""Reduction operations: SUM, PROD, MAX, MIN, or any callable ``op(left, right)``.

Operands are always given in rank order (``left`` holds lower ranks), so an associative but
non-commutative callable works too. A predefined op combines numpy arrays elementwise with its
ufunc and other objects with the Python operator (``+``, ``*``, ``max``, ``min``), as mpi4py's
do for pickled objects.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Op:
    name: str
    ufunc: np.ufunc
    function: Callable[[Any, Any], Any]

    def __call__(self, left: Any, right: Any) -> Any:
        if isinstance(left, np.ndarray) or isinstance(right, np.ndarray):
            return self.ufunc(left, right)
        return self.function(left, right)

    def __repr__(self) -> str:
        return self.name


SUM = Op("SUM", np.add, operator.add)
PROD = Op("PROD", np.multiply, operator.mul)
MAX = Op("MAX", np.maximum, max)
MIN = Op("MIN", np.minimum, min)

ReduceOp = Op | Callable[[Any, Any], Any]


def combine_into(op: ReduceOp, left: np.ndarray, right: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = op(left, right)``, in place for the predefined ops (``out`` may alias)."""
    if isinstance(op, Op):
        op.ufunc(left, right, out=out)
    else:
        out[...] = op(left, right)
