"""A deterministic galaxy dataset from the real SDSS catalogue, rendered into images.

The test split is rendered from ``SDSS_MGS.test`` and the training split from
``SDSS_MGS.train``, so no galaxy of one appears in the other. A dataset larger than the
catalogue (5,000 galaxies per split) cycles through it again as new *realizations*: the same
magnitudes and redshift, a new morphology, PSF and noise. Sample ``i`` of a split is catalogue
row ``i % 5000`` in realization ``i // 5000``; its object id encodes all three
(split * 10**9 + realization * 10**5 + row), and its image depends only on (seed, realization,
object id), so rendering in parallel or in pieces gives the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Literal

import numpy as np

from cosmicai.data.catalogue import catalogue_sha256, load_catalogue
from cosmicai.data.format import Partition
from cosmicai.data.partitioner import WrittenPartition, repartition, samples_per_partition
from cosmicai.data.render import render_galaxies
from cosmicai.storage import Location

Split = Literal["train", "test"]
SPLIT_CODE: dict[str, int] = {"test": 1, "train": 2}
ROW_BASE = 100_000
SPLIT_BASE = 1_000_000_000
#: Samples rendered per task: small enough to spread over cores, large enough to amortise.
CHUNK = 512


def object_ids(split: Split, start: int, stop: int, catalogue_size: int) -> np.ndarray:
    i = np.arange(start, stop, dtype=np.int64)
    return SPLIT_CODE[split] * SPLIT_BASE + (i // catalogue_size) * ROW_BASE + i % catalogue_size


def render_chunk(split: Split, start: int, stop: int, seed: int) -> Partition:
    """Samples ``start``..``stop`` of a split (rendered in this process)."""
    catalogue = load_catalogue(split)
    n = len(catalogue)
    i = np.arange(start, stop)
    rows, realizations = i % n, i // n
    ids = object_ids(split, start, stop, n)
    images = np.empty((stop - start, 5, 32, 32), dtype=np.float32)
    # One call per realization: the renderer takes a single realization number.
    for realization in np.unique(realizations):
        mask = realizations == realization
        images[mask] = render_galaxies(
            catalogue.magnitudes[rows[mask]],
            catalogue.redshift[rows[mask]],
            ids[mask],
            seed=seed,
            realization=int(realization),
        )
    return Partition(
        images=images,
        magnitudes=catalogue.magnitudes[rows],
        object_id=ids,
        redshift=catalogue.redshift[rows],
    )


def _init_worker() -> None:
    # Rendering uses numpy FFTs; one thread per process is faster than processes fighting
    # over BLAS/FFT thread pools on a small machine.
    os.environ["OMP_NUM_THREADS"] = "1"


def render_split(split: Split, samples: int, seed: int, processes: int) -> Iterator[Partition]:
    """The samples of a split in order, rendered ``processes`` chunks at a time."""
    bounds = [(s, min(s + CHUNK, samples)) for s in range(0, samples, CHUNK)]
    if processes <= 1:
        for start, stop in bounds:
            yield render_chunk(split, start, stop, seed)
        return
    with ProcessPoolExecutor(
        processes, mp_context=get_context("spawn"), initializer=_init_worker
    ) as pool:
        # map keeps order, so partitions are deterministic whatever finishes first.
        yield from pool.map(
            render_chunk,
            [split] * len(bounds),
            [b[0] for b in bounds],
            [b[1] for b in bounds],
            [seed] * len(bounds),
        )


def synthesize(
    out: Location,
    *,
    size_bytes: int,
    split: Split = "test",
    seed: int = 0,
    partition_bytes: int = 100 * 2**20,
    processes: int | None = None,
    on_written: Callable[[WrittenPartition], None] | None = None,
) -> list[WrittenPartition]:
    """Render ``size_bytes`` of one split into numbered partitions under ``out``."""
    samples = samples_per_partition(size_bytes)
    processes = processes or os.cpu_count() or 1
    provenance: dict[str, object] = {
        "source": "cosmicai-synth",
        "split": split,
        "seed": seed,
        "catalogue": f"SDSS_MGS.{split}",
        "catalogue_sha256": catalogue_sha256(split),
        "renderer": "cosmicai.data.render v1",
    }
    return repartition(
        render_split(split, samples, seed, processes),
        out,
        partition_bytes,
        provenance=provenance,
        on_written=on_written,
    )
