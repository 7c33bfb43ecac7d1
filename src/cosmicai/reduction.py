"""The workers' own reduction of the run's metrics, over the communicator.

Every rank contributes its metric sums and its Δz values (:mod:`cosmicai.metrics`); rank 0
receives the sums reduced in rank order and every rank's Δz, computes the global metrics and
writes them to ``reduced.json`` below the run's prefix. Summarize uses that file when it covers
every rank, and reads every rank's result otherwise, so a collective that fails (a peer lost, a
deadline passed) costs time, never results: it is logged and recorded in the rank's result.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from cosmicai.exceptions import CosmicAIError
from cosmicai.metrics import STAT_FIELDS, metrics_from_statistics, sufficient_statistics
from cosmicai.run_types import CommOutcome, ReducedMetrics, RunLayout, WorkItem

if TYPE_CHECKING:
    from cosmicai.request import RunRequest
    from cosmicai.storage import Storage

logger = logging.getLogger(__name__)
_NONFINITE = STAT_FIELDS.index("nonfinite")


def reduce_with_peers(
    item: WorkItem,
    request: RunRequest,
    storage: Storage,
    predictions: dict[str, np.ndarray[Any, Any]],
) -> CommOutcome:
    """This rank's part in the reduction; never raises (the outcome says what happened)."""
    # The communicator loads only in runs that use it: a worker without one starts faster.
    from cosmicai.comm import SUM
    from cosmicai.comm.session import open_communicator, settings_from_env

    start = time.perf_counter()
    mode = request.communicator
    assert mode != "off"
    note = ""
    try:
        comm, note = open_communicator(
            settings_from_env(mode),
            rank=item.rank,
            size=item.world_size,
            job_id=item.run_id,
            storage=storage,
            bucket=item.bucket,
            prefix=RunLayout(item.run_prefix).comm_prefix,
        )
        with comm:
            sums, dz = sufficient_statistics(predictions["redshift"], predictions["z_pred"])
            counts = np.array([len(predictions["z_pred"])], dtype=np.int64)
            total_sums = comm.reduce(sums, op=SUM, root=0)
            total_samples = comm.reduce(counts, op=SUM, root=0)
            gathered = comm.gather(dz, root=0)
            links = dict(comm.link_stats().by_kind)
        seconds = time.perf_counter() - start
        if item.rank == 0:
            assert gathered is not None
            all_dz = np.concatenate(gathered) if gathered else np.zeros(0)
            reduced = ReducedMetrics(
                run_id=item.run_id,
                world_size=item.world_size,
                samples=int(total_samples[0]),
                # Finite pairs plus the known redshifts whose prediction was not finite.
                samples_with_redshift=int(total_sums[0] + total_sums[_NONFINITE]),
                metrics=metrics_from_statistics(total_sums, all_dz),
                links=links,
                seconds=seconds,
            )
            storage.put(
                item.bucket,
                RunLayout(item.run_prefix).reduced,
                reduced.model_dump_json(indent=2).encode(),
            )
        logger.info("rank %d reduced with its peers in %.3f s: %s", item.rank, seconds, note)
        return CommOutcome(mode=mode, status="ok", note=note, links=links, seconds=seconds)
    except (CosmicAIError, OSError, ValueError) as exc:
        seconds = time.perf_counter() - start
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "rank %d: reduction with peers failed after %.3f s (%s); Summarize will read "
            "every rank's result instead",
            item.rank,
            seconds,
            reason,
        )
        return CommOutcome(mode=mode, status="degraded", note=note, seconds=seconds, reason=reason)


def read_reduced(storage: Storage, bucket: str, run_prefix: str) -> ReducedMetrics | None:
    """Rank 0's reduced metrics, if it wrote them."""
    try:
        return ReducedMetrics.model_validate_json(
            storage.get(bucket, RunLayout(run_prefix).reduced)
        )
    except (CosmicAIError, ValidationError):
        return None
