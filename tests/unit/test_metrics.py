from __future__ import annotations

import numpy as np
import pytest

from cosmicai.metrics import redshift_metrics


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
