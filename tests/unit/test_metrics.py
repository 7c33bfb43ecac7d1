from __future__ import annotations

import itertools

import numpy as np
import pytest

from cosmicai.metrics import metrics_from_statistics, redshift_metrics, sufficient_statistics


def test_metrics_match_their_definitions() -> None:
    # GIVEN predictions with a known error pattern
    z = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    pred = np.array([0.1, 0.25, 0.2, 0.4], dtype=np.float32)
    # WHEN measured
    m = redshift_metrics(z, pred)
    # THEN each metric is what CosmicAI's definition gives, worked by hand
    assert m is not None
    dz = (pred.astype(float) - z) / (1 + z.astype(float))
    assert m.samples == 4
    assert m.mae == pytest.approx((0.05 + 0.1) / 4, rel=1e-5)
    assert m.mse == pytest.approx((0.05**2 + 0.1**2) / 4, rel=1e-4)
    assert m.bias == pytest.approx(dz.mean(), rel=1e-5)
    assert m.nmad == pytest.approx(1.48 * np.median(np.abs(dz - np.median(dz))), rel=1e-5)
    assert m.r2 == pytest.approx(1 - (0.05**2 + 0.1**2) / 0.05, rel=1e-4)
    assert m.outlier_fraction == 0.0


def test_outliers_and_unknown_redshifts() -> None:
    z = np.array([0.1, np.nan, 0.1, 0.1], dtype=np.float32)
    pred = np.array([0.5, 0.0, 0.1, 0.1], dtype=np.float32)
    m = redshift_metrics(z, pred)
    assert m is not None
    assert m.samples == 3  # the unknown redshift is left out
    assert m.outlier_fraction == pytest.approx(1 / 3)


def test_no_known_redshift_gives_none() -> None:
    assert redshift_metrics(np.full(3, np.nan), np.zeros(3)) is None


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="shape"):
        redshift_metrics(np.zeros(3), np.zeros(4))


def test_statistics_of_parts_give_the_metrics_of_the_whole() -> None:
    # GIVEN predictions split unevenly over 4 ranks, one with unknown redshifts
    rng = np.random.default_rng(5)
    z = rng.uniform(0.01, 0.3, 1000)
    pred = z + rng.normal(0, 0.02, 1000)
    z[::97] = np.nan
    bounds = [0, 10, 400, 401, 1000]
    parts = [sufficient_statistics(z[a:b], pred[a:b]) for a, b in itertools.pairwise(bounds)]
    # WHEN the sums are added and the Δz gathered
    sums = np.sum([p[0] for p in parts], axis=0)
    dz = np.concatenate([p[1] for p in parts])
    # THEN the metrics equal those of all predictions at once
    whole = redshift_metrics(z, pred)
    combined = metrics_from_statistics(sums, dz)
    assert whole is not None and combined is not None
    assert combined.samples == whole.samples == 1000 - len(range(0, 1000, 97))
    for name in ("mae", "mse", "bias", "r2"):
        assert getattr(combined, name) == pytest.approx(getattr(whole, name), rel=1e-9)
    # and what needs no sums in another order is the same number
    assert combined.nmad == whole.nmad
    assert combined.outlier_fraction == whole.outlier_fraction


def test_statistics_of_nothing() -> None:
    sums, dz = sufficient_statistics(np.array([np.nan]), np.array([0.1]))
    assert sums[0] == 0 and dz.size == 0
    assert metrics_from_statistics(sums, dz) is None
    with pytest.raises(ValueError, match="Δz values"):
        metrics_from_statistics(np.array([2.0, 0, 0, 0, 0, 0, 0]), np.zeros(1))
