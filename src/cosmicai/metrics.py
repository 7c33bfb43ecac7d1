"""Photometric-redshift accuracy metrics, as CosmicAI defines them.

With Δz = (z_pred − z) / (1 + z):

- MAE  = mean |z_pred − z|            - MSE = mean (z_pred − z)²
- bias = mean Δz                      - NMAD ("precision") = 1.48 · median |Δz − median Δz|
- R²   = 1 − Σ(z_pred − z)² / Σ(z − mean z)²
- outlier fraction = fraction of |Δz| > 0.15

Which samples count: a true redshift is known when it is finite and above −1 (SDSS writes
−1 or NaN for "no spectrum"; 1 + z = 0 would make Δz infinite). A prediction that is NaN or
infinite (a broken model, or NaN pixels in the input) is a catastrophic failure: it counts as
an outlier in the outlier fraction and is left out of MAE, MSE, bias, NMAD and R², which are
computed on the finite pairs; ``nonfinite_predictions`` says how many were left out.

NMAD needs a median over every sample, which cannot be averaged from per-rank values; global
metrics are therefore always computed from all predictions (or, later, from exact sufficient
statistics plus the gathered Δz values).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

OUTLIER_THRESHOLD = 0.15
NMAD_SCALE = 1.48


class RedshiftMetrics(BaseModel):
    #: Finite (true, predicted) pairs the metrics are computed on.
    samples: int
    mae: float
    mse: float
    bias: float
    nmad: float
    #: None when every true redshift is the same (R² is undefined; JSON has no NaN).
    r2: float | None
    #: Over every sample with a known redshift, non-finite predictions counted as outliers.
    outlier_fraction: float
    #: Samples with a known redshift whose prediction is NaN or infinite (left out above).
    nonfinite_predictions: int = 0


def known_redshift(z_true: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Which true redshifts are known: finite and above −1."""
    z = np.asarray(z_true, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(z) & (z > -1.0)


def _pairs(
    z_true: npt.NDArray[Any], z_pred: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], int]:
    """The finite pairs with a known redshift, and how many known ones had a non-finite
    prediction."""
    z = np.asarray(z_true, dtype=np.float64)
    p = np.asarray(z_pred, dtype=np.float64)
    if z.shape != p.shape:
        raise ValueError(f"z_true has shape {z.shape}, z_pred has shape {p.shape}")
    known = known_redshift(z)
    finite = known & np.isfinite(p)
    return z[finite], p[finite], int(known.sum() - finite.sum())


def redshift_metrics(z_true: npt.NDArray[Any], z_pred: npt.NDArray[Any]) -> RedshiftMetrics | None:
    """Metrics of the samples whose true redshift is known; None if no pair is finite."""
    z, p, nonfinite = _pairs(z_true, z_pred)
    if z.size == 0:
        return None
    error = p - z
    dz = error / (1.0 + z)
    total = float(np.sum((z - z.mean()) ** 2))
    outliers = int(np.sum(np.abs(dz) > OUTLIER_THRESHOLD)) + nonfinite
    return RedshiftMetrics(
        samples=int(z.size),
        mae=float(np.mean(np.abs(error))),
        mse=float(np.mean(error**2)),
        bias=float(np.mean(dz)),
        nmad=float(NMAD_SCALE * np.median(np.abs(dz - np.median(dz)))),
        r2=float(1.0 - np.sum(error**2) / total) if total > 0 else None,
        outlier_fraction=outliers / (z.size + nonfinite),
        nonfinite_predictions=nonfinite,
    )


#: Order of the sums in a :func:`sufficient_statistics` vector.
STAT_FIELDS = (
    "n",
    "sum_abs_error",
    "sum_sq_error",
    "sum_dz",
    "sum_z",
    "sum_z_sq",
    "outliers",
    "nonfinite",
)


def sufficient_statistics(
    z_true: npt.NDArray[Any], z_pred: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """What one rank contributes to exact global metrics: sums (added across ranks) and its
    Δz values (gathered, since NMAD needs a median over every sample)."""
    z, p, nonfinite = _pairs(z_true, z_pred)
    error = p - z
    dz = error / (1.0 + z)
    sums = np.array(
        [
            z.size,
            np.sum(np.abs(error)),
            np.sum(error**2),
            np.sum(dz),
            np.sum(z),
            np.sum(z**2),
            np.sum(np.abs(dz) > OUTLIER_THRESHOLD),
            nonfinite,
        ],
        dtype=np.float64,
    )
    # float64 on the wire too: the median of the same float64 values is the same number, so
    # NMAD comes out identical to the one computed from all predictions at once.
    return sums, dz


def metrics_from_statistics(
    sums: npt.NDArray[np.float64], dz: npt.NDArray[Any]
) -> RedshiftMetrics | None:
    """Global metrics from summed statistics and every rank's Δz (see
    :func:`sufficient_statistics`); equal to :func:`redshift_metrics` of the concatenated
    predictions up to floating-point summation order."""
    n = int(sums[0])
    if n == 0:
        return None
    if len(dz) != n:
        raise ValueError(f"{len(dz)} Δz values for {n} samples")
    _, abs_error, sq_error, sum_dz, sum_z, sum_z_sq, outliers, nonfinite = (float(v) for v in sums)
    total = sum_z_sq - sum_z * sum_z / n
    dz64 = np.asarray(dz, dtype=np.float64)
    return RedshiftMetrics(
        samples=n,
        mae=abs_error / n,
        mse=sq_error / n,
        bias=sum_dz / n,
        nmad=float(NMAD_SCALE * np.median(np.abs(dz64 - np.median(dz64)))),
        r2=1.0 - sq_error / total if total > 0 else None,
        outlier_fraction=(outliers + nonfinite) / (n + nonfinite),
        nonfinite_predictions=int(nonfinite),
    )
