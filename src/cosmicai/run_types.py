"""The run's data: what the stages hand each other and write, and where a run keeps it.

The bottom floor of a run: the stages (:mod:`cosmicai.pipeline`), the workers' reduction
(:mod:`cosmicai.reduction`), the reports and figures all import these types from here, and
every object key a run writes comes from :class:`RunLayout` (:mod:`cosmicai.layout`,
re-exported here). Everything a run writes lives
below its own prefix ``<result_path><run_id>/`` in the request's bucket::

    request.json                     the normalised request
    plan.json                        ranks and their partitions
    manifest.json                    one small item per rank (the Distributed Map's ItemReader)
    ranks/<rank>/result.json         a rank's result; written last, it is the rank's commit
    ranks/<rank>/predictions-<attempt>.safetensors
    comm/                            the object-store channel's frames (communicator runs)
    reduced.json                     rank 0's reduced metrics (communicator runs)
    summary.json, summary.md, predictions.csv, plots/<name>.png
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from cosmicai.cost import CostEstimate

# Re-exported: a run's types and its keys are one import for the stages.
from cosmicai.layout import ATTEMPT_LENGTH as ATTEMPT_LENGTH
from cosmicai.layout import RunLayout as RunLayout
from cosmicai.layout import new_attempt as new_attempt
from cosmicai.metrics import RedshiftMetrics
from cosmicai.request import RunRequest


class PartitionRef(BaseModel):
    key: str
    number: int
    bytes: int
    samples: int | None = None


class RankPlan(BaseModel):
    rank: int
    partitions: list[PartitionRef]

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.partitions)


class Plan(BaseModel):
    run_id: str
    request: RunRequest
    data_bucket: str
    world_size: int
    ranks: list[RankPlan]
    partitions: int
    bytes: int
    samples: int | None = Field(description="Known when the dataset has an index.")


class RunPointer(BaseModel):
    """What Initialize returns: small, so it fits any state payload."""

    run_id: str
    bucket: str
    run_prefix: str
    plan_key: str
    manifest_key: str
    world_size: int
    partitions: int
    bytes: int

    def work_items(self) -> list[WorkItem]:
        """One Distributed Map item per rank of this run."""
        return [
            WorkItem(
                run_id=self.run_id,
                bucket=self.bucket,
                run_prefix=self.run_prefix,
                rank=rank,
                world_size=self.world_size,
            )
            for rank in range(self.world_size)
        ]


class WorkItem(BaseModel):
    """One item of the Distributed Map: which rank of which run to work on."""

    run_id: str
    bucket: str
    run_prefix: str
    rank: int = Field(ge=0)
    world_size: int = Field(ge=1)


class Timings(BaseModel):
    #: Process start + imports + model load before this rank's handler ran, when the rank
    #: ran in a fresh (cold) worker; 0 in a warm one. Lambda bills it as INIT.
    cold_start_s: float = 0.0
    #: CPU time of that start-up: unlike its wall time, not stretched by a busy machine.
    cold_start_cpu_s: float = 0.0
    read_s: float = 0.0
    inference_s: float = 0.0
    #: CPU time of the process during inference: unlike wall time, it does not grow when
    #: other work shares the cores, so it calibrates the projection to a Lambda vCPU.
    inference_cpu_s: float = 0.0
    write_s: float = 0.0
    total_s: float = 0.0


class RankResult(BaseModel):
    run_id: str
    rank: int
    status: Literal["ok", "failed"]
    attempt: str
    partitions: int = 0
    samples: int = 0
    bytes: int = 0
    timings: Timings = Field(default_factory=Timings)
    started_at: float
    finished_at: float
    peak_rss_mb: float
    s3_requests: dict[str, int] = Field(default_factory=dict)
    predictions_key: str | None = None
    error: str | None = None
    communicator: CommOutcome | None = None


class CommOutcome(BaseModel):
    """How a rank's part in the worker-to-worker reduction went."""

    mode: str
    status: Literal["ok", "degraded"]
    note: str = ""
    #: Links per channel kind, e.g. {"tcp": 2, "store": 1}.
    links: dict[str, int] = Field(default_factory=dict)
    seconds: float = 0.0
    #: Why the reduction did not finish; Summarize then reads every rank's result instead.
    reason: str | None = None


class RankRow(BaseModel):
    rank: int
    status: str
    partitions: int
    samples: int
    bytes: int
    read_s: float
    inference_s: float
    write_s: float
    total_s: float
    cold_start_s: float = 0.0
    billed_ms: int
    peak_rss_mb: float
    error: str | None = None


class Performance(BaseModel):
    map_wall_s: float
    samples_per_s: float
    gbit_per_s: float
    max_rank_s: float
    mean_rank_s: float
    max_peak_rss_mb: float
    memory_mb: int
    cost: CostEstimate


class CommSummary(BaseModel):
    mode: str
    #: Links per channel kind over all ranks (each link counted from both ends).
    links: dict[str, int]
    #: Ranks whose part in the reduction failed, and why.
    degraded_ranks: dict[int, str]


class Summary(BaseModel):
    run_id: str
    status: Literal["ok", "partial", "failed"]
    world_size: int
    ranks_ok: int
    failed_ranks: dict[int, str]
    partitions: int
    samples: int
    samples_with_redshift: int
    nonfinite_predictions: int = Field(
        default=0,
        description="Samples with a known redshift whose prediction is NaN or infinite: left "
        "out of MAE, MSE, bias, NMAD and R², counted as outliers.",
    )
    bytes: int
    metrics: RedshiftMetrics | None
    metrics_source: Literal["rank results", "communicator"] = Field(
        default="rank results",
        description="Whether the metrics came from the workers' own reduction (reduced.json) "
        "or from reading every rank's predictions.",
    )
    communicator: CommSummary | None = None
    baseline_mean_mae: float | None = Field(
        description="MAE of always predicting the mean true redshift, for comparison."
    )
    performance: Performance
    ranks: list[RankRow]
    ignored_fields: list[str]
    outputs: dict[str, str]


class ReducedMetrics(BaseModel):
    """What rank 0 writes once every rank's statistics have arrived."""

    run_id: str
    world_size: int
    samples: int
    samples_with_redshift: int
    metrics: RedshiftMetrics | None
    links: dict[str, int]
    seconds: float


#: The tensors of a rank's predictions file: name → (safetensors dtype, shape of one sample).
PREDICTIONS: dict[str, tuple[str, tuple[int, ...]]] = {
    "object_id": ("I64", ()),
    "z_pred": ("F32", ()),
    "redshift": ("F32", ()),
    "partition": ("I32", ()),
}


def prediction_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype of predictions tensor ``name``."""
    return np.dtype({"F32": "<f4", "I32": "<i4", "I64": "<i8"}[PREDICTIONS[name][0]])


def empty_predictions() -> dict[str, np.ndarray[Any, Any]]:
    """A predictions mapping with no samples (a rank with nothing to contribute)."""
    return {name: np.zeros(0, prediction_dtype(name)) for name in PREDICTIONS}
