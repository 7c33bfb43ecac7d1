"""Small datasets and the test bucket's name, shared by the tests' fixtures and modules."""

from __future__ import annotations

import numpy as np

from cosmicai.data.format import Partition

#: The bucket the storage fixtures create (moto S3) or make a directory for (local).
BUCKET = "cosmicai-test"


def make_partition(samples: int, *, first_id: int = 0, seed: int = 0) -> Partition:
    """Random but plausible arrays: enough to exercise formats, plans and models."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.01, 0.3, samples).astype(np.float32)
    magnitudes = (rng.normal(17.0, 1.0, (samples, 1)) + rng.normal(0, 0.3, (samples, 5))).astype(
        np.float32
    )
    images = rng.lognormal(0.0, 1.0, (samples, 5, 32, 32)).astype(np.float32)
    return Partition(
        images=images,
        magnitudes=magnitudes,
        object_id=np.arange(first_id, first_id + samples, dtype=np.int64),
        redshift=z,
        provenance={"source": "test", "seed": seed},
    )
