"""The three stages of a run: initialize, worker (one per rank) and summarize.

They are plain functions of (event, storage). The Lambda handlers and the local runner call the
same functions; nothing here knows where it runs. Everything a run writes lives below its own
prefix ``<result_path><run_id>/`` in the request's bucket:

    request.json                     the normalised request
    plan.json                        ranks and their partitions
    manifest.json                    one small item per rank (the Distributed Map's ItemReader)
    ranks/<rank>/result.json         a rank's result; written last, it is the rank's commit
    ranks/<rank>/predictions-<attempt>.safetensors
    summary.json, summary.md, predictions.csv
"""

from __future__ import annotations

import json
import resource
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from cosmicai.cost import CostEstimate, billed_ms, estimate_cost
from cosmicai.data.format import (
    Partition,
    decode_partition,
    decode_tensors,
    encode_tensors,
    join_key,
)
from cosmicai.data.partitioner import DATASET_INDEX, list_numbered
from cosmicai.exceptions import (
    CosmicAIError,
    InvalidRequestError,
    ObjectNotFoundError,
    PlanError,
    RankFailedError,
)
from cosmicai.metrics import RedshiftMetrics, redshift_metrics
from cosmicai.model import get_model
from cosmicai.request import RunRequest
from cosmicai.storage import Storage

# -- contracts between the stages ---------------------------------------------------------


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


class WorkItem(BaseModel):
    """One item of the Distributed Map: which rank of which run to work on."""

    run_id: str
    bucket: str
    run_prefix: str
    rank: int = Field(ge=0)
    world_size: int = Field(ge=1)


class Timings(BaseModel):
    read_s: float = 0.0
    inference_s: float = 0.0
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


def _key(run_prefix: str, name: str) -> str:
    return join_key(run_prefix, name)


def _rank_prefix(run_prefix: str, rank: int) -> str:
    return _key(run_prefix, f"ranks/{rank:05d}/")


def _put_json(storage: Storage, bucket: str, key: str, value: BaseModel | Any) -> None:
    if isinstance(value, BaseModel):
        text = value.model_dump_json(indent=2)
    else:
        text = json.dumps(value, indent=2)
    storage.put(bucket, key, text.encode())


def _parse(model: type[Any], data: Any, what: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or what}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidRequestError(f"invalid {what}: {problems}") from None


def _load_json(storage: Storage, bucket: str, key: str) -> Any:
    raw = storage.get(bucket, key)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CosmicAIError(f"{bucket}/{key} is not valid JSON: {exc}") from exc


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# -- Initialize ----------------------------------------------------------------------------


def list_partitions(storage: Storage, bucket: str, prefix: str) -> list[PartitionRef]:
    """Every partition ``N.safetensors`` directly under ``prefix``, in numeric order of N.

    Sample counts come from the dataset index when there is one that matches the listing.
    """
    found = [
        PartitionRef(key=info.key, number=number, bytes=info.size)
        for number, info in list_numbered(storage, bucket, prefix)
    ]
    try:
        index = json.loads(storage.get(bucket, join_key(prefix, DATASET_INDEX)))
        counts = {
            int(p["number"]): (int(p["samples"]), int(p["bytes"])) for p in index["partitions"]
        }
    except (ObjectNotFoundError, ValueError, KeyError, TypeError):
        counts = {}
    for ref in found:
        if ref.number in counts and counts[ref.number][1] == ref.bytes:
            ref.samples = counts[ref.number][0]
    return found


def plan_ranks(partitions: list[PartitionRef], world_size: int) -> list[RankPlan]:
    """Contiguous blocks of partitions, sizes differing by at most one, lower ranks first."""
    if world_size > len(partitions):
        raise PlanError(
            f"world_size {world_size} is larger than the number of partitions "
            f"({len(partitions)}): every rank needs at least one partition"
        )
    base, extra = divmod(len(partitions), world_size)
    ranks, start = [], 0
    for rank in range(world_size):
        count = base + (1 if rank < extra else 0)
        ranks.append(RankPlan(rank=rank, partitions=partitions[start : start + count]))
        start += count
    return ranks


def make_plan(request: RunRequest, storage: Storage) -> Plan:
    partitions = list_partitions(storage, request.source_bucket, request.data_prefix)
    if not partitions:
        raise PlanError(
            f"no partitions (N.safetensors) under {storage.description} bucket "
            f"{request.source_bucket!r} prefix {request.data_prefix!r}"
        )
    if request.file_limit is not None:
        partitions = partitions[: request.file_limit]
    world_size = request.world_size or len(partitions)
    if (
        request.communicator != "off"
        and request.max_concurrency is not None
        and world_size > request.max_concurrency
    ):
        # Collectives need every rank alive at once; ranks queued behind MaxConcurrency would
        # wait for peers that cannot start until they finish.
        raise PlanError(
            f"communicator {request.communicator!r} needs all {world_size} ranks running at "
            f"once, but at most {request.max_concurrency} can run (max concurrency): lower "
            "world_size, raise the concurrency, or set communicator to 'off'"
        )
    ranks = plan_ranks(partitions, world_size)
    known = all(p.samples is not None for p in partitions)
    return Plan(
        run_id=request.run_id,
        request=request,
        data_bucket=request.source_bucket,
        world_size=world_size,
        ranks=ranks,
        partitions=len(partitions),
        bytes=sum(p.bytes for p in partitions),
        samples=sum(p.samples or 0 for p in partitions) if known else None,
    )


def initialize(request: RunRequest, storage: Storage) -> RunPointer:
    """Plan the run and write its plan and item manifest below the run's own prefix."""
    plan = make_plan(request, storage)
    prefix = request.run_prefix
    pointer = RunPointer(
        run_id=request.run_id,
        bucket=request.bucket,
        run_prefix=prefix,
        plan_key=_key(prefix, "plan.json"),
        manifest_key=_key(prefix, "manifest.json"),
        world_size=plan.world_size,
        partitions=plan.partitions,
        bytes=plan.bytes,
    )
    items = [
        WorkItem(
            run_id=request.run_id,
            bucket=request.bucket,
            run_prefix=prefix,
            rank=rank,
            world_size=plan.world_size,
        ).model_dump()
        for rank in range(plan.world_size)
    ]
    _put_json(storage, request.bucket, _key(prefix, "request.json"), request)
    _put_json(storage, request.bucket, pointer.plan_key, plan)
    _put_json(storage, request.bucket, pointer.manifest_key, items)
    return pointer


def load_plan(storage: Storage, bucket: str, run_prefix: str) -> Plan:
    plan: Plan = _parse(Plan, _load_json(storage, bucket, _key(run_prefix, "plan.json")), "plan")
    return plan


# -- Worker --------------------------------------------------------------------------------

_PREDICTIONS = {
    "object_id": ("I64", ()),
    "z_pred": ("F32", ()),
    "redshift": ("F32", ()),
    "partition": ("I32", ()),
}


def _read_partition(storage: Storage, bucket: str, key: str) -> tuple[bytes, Partition]:
    raw = bytes(storage.get(bucket, key))
    return raw, decode_partition(raw, name=f"partition {bucket}/{key}")


def _prefetched(
    storage: Storage, bucket: str, refs: Sequence[PartitionRef]
) -> Iterator[tuple[PartitionRef, bytes, Partition, float]]:
    """Each partition with the seconds inference waited for it; the next one is read while
    the caller infers the current one (ORT releases the GIL), so a rank with several
    partitions waits on storage once. At most two partitions are in memory."""
    if not refs:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool:
        pending = pool.submit(_read_partition, storage, bucket, refs[0].key)
        for i, ref in enumerate(refs):
            t0 = time.perf_counter()
            raw, partition = pending.result()
            waited = time.perf_counter() - t0
            if i + 1 < len(refs):
                pending = pool.submit(_read_partition, storage, bucket, refs[i + 1].key)
            yield ref, raw, partition, waited
            del raw, partition


def run_rank(item: WorkItem, storage: Storage) -> RankResult:
    """Infer every partition of one rank and write its predictions and result.

    The predictions go to a file named by this attempt, then the result (which names that
    file) replaces any earlier one in one PUT: a reader sees the old attempt or the new one,
    whole. A rank that fails writes a failed result naming the cause and raises
    :class:`RankFailedError`, so the Map counts it and Summarize can name it.
    """
    started_at, start = time.time(), time.perf_counter()
    attempt = uuid.uuid4().hex[:12]
    timings = Timings()
    n_partitions = n_samples = n_bytes = 0

    def result(
        status: Literal["ok", "failed"],
        *,
        predictions_key: str | None = None,
        error: str | None = None,
    ) -> RankResult:
        timings.total_s = time.perf_counter() - start
        return RankResult(
            run_id=item.run_id,
            rank=item.rank,
            status=status,
            attempt=attempt,
            partitions=n_partitions,
            samples=n_samples,
            bytes=n_bytes,
            timings=timings,
            started_at=started_at,
            finished_at=time.time(),
            peak_rss_mb=peak_rss_mb(),
            s3_requests=dict(storage.requests),
            predictions_key=predictions_key,
            error=error,
        )

    result_key = _key(_rank_prefix(item.run_prefix, item.rank), "result.json")
    request: RunRequest | None = None
    try:
        plan = load_plan(storage, item.bucket, item.run_prefix)
        if item.rank >= plan.world_size or item.world_size != plan.world_size:
            raise InvalidRequestError(
                f"rank {item.rank} of world size {item.world_size} does not match the plan "
                f"(world size {plan.world_size})"
            )
        request = plan.request
        model = get_model(request.model, threads=request.ort_threads, storage=storage)
        chunks: dict[str, list[np.ndarray[Any, Any]]] = {name: [] for name in _PREDICTIONS}
        for ref, raw, partition, waited in _prefetched(
            storage, plan.data_bucket, plan.ranks[item.rank].partitions
        ):
            t1 = time.perf_counter()
            for batch in partition.batches(request.batch_size):
                chunks["z_pred"].append(model.predict(batch.images, batch.magnitudes))
            timings.read_s += waited
            timings.inference_s += time.perf_counter() - t1
            chunks["object_id"].append(np.array(partition.object_id))
            chunks["redshift"].append(
                np.array(partition.redshift)
                if partition.redshift is not None
                else np.full(partition.samples, np.nan, dtype=np.float32)
            )
            chunks["partition"].append(np.full(partition.samples, ref.number, dtype=np.int32))
            n_partitions += 1
            n_samples += partition.samples
            n_bytes += len(raw)
            del raw, partition

        t2 = time.perf_counter()
        predictions = {
            name: np.concatenate(parts).astype(_dtype(_PREDICTIONS[name][0]))
            if parts
            else np.zeros(0, _dtype(_PREDICTIONS[name][0]))
            for name, parts in chunks.items()
        }
        predictions_key = _key(
            _rank_prefix(item.run_prefix, item.rank), f"predictions-{attempt}.safetensors"
        )
        storage.put(
            item.bucket,
            predictions_key,
            encode_tensors(predictions, {"run_id": item.run_id, "rank": str(item.rank)}),
        )
        timings.write_s = time.perf_counter() - t2
        previous = _previous_predictions(storage, item.bucket, result_key)
        done = result("ok", predictions_key=predictions_key)
        _put_json(storage, item.bucket, result_key, done)
        if previous and previous != predictions_key:
            # The new result no longer points at it; removing it is tidiness, not safety.
            storage.delete(item.bucket, previous)
    except Exception as exc:
        message = str(exc) if isinstance(exc, CosmicAIError) else f"{type(exc).__name__}: {exc}"
        failed = result("failed", error=message)
        try:
            if not _has_ok_result(storage, item.bucket, result_key):
                _put_json(storage, item.bucket, result_key, failed)
        except CosmicAIError:
            pass  # the original error is the one worth reporting
        if request is not None and request.communicator != "off":
            # Still take part, with nothing to contribute: the peers' collectives then end
            # at once instead of waiting out their deadline for a rank that will never come
            # (Summarize ignores a reduction that misses a failed rank's samples anyway).
            from cosmicai.reduction import reduce_with_peers

            empty = {name: np.zeros(0, _dtype(kind)) for name, (kind, _) in _PREDICTIONS.items()}
            reduce_with_peers(item, request, storage, empty)
        raise RankFailedError(f"rank {item.rank} failed: {message}") from exc
    if request.communicator == "off":
        return done
    # After the rank's own result is written: a failed collective loses nothing, it only
    # sends Summarize back to reading every rank's result.
    from cosmicai.reduction import reduce_with_peers

    done = done.model_copy(
        update={"communicator": reduce_with_peers(item, request, storage, predictions)}
    )
    _put_json(storage, item.bucket, result_key, done)
    return done


def _dtype(name: str) -> np.dtype[Any]:
    return np.dtype({"F32": "<f4", "I32": "<i4", "I64": "<i8"}[name])


def _read_result(storage: Storage, bucket: str, key: str) -> RankResult | None:
    try:
        return RankResult.model_validate(_load_json(storage, bucket, key))
    except (ObjectNotFoundError, ValidationError, CosmicAIError):
        return None


def _previous_predictions(storage: Storage, bucket: str, result_key: str) -> str | None:
    previous = _read_result(storage, bucket, result_key)
    return previous.predictions_key if previous else None


def _has_ok_result(storage: Storage, bucket: str, result_key: str) -> bool:
    # A retry that fails (say, S3 throttled) must not overwrite a good earlier attempt.
    previous = _read_result(storage, bucket, result_key)
    return previous is not None and previous.status == "ok"


# -- Summarize -----------------------------------------------------------------------------


def summarize(
    pointer: RunPointer, storage: Storage, *, extra_durations_s: tuple[float, ...] = ()
) -> Summary:
    """Exact global metrics over every rank that succeeded, the performance table and cost.

    Ranks that failed or never reported are named in ``failed_ranks``; their samples are
    missing from the metrics, and the status says ``partial`` (or ``failed`` if none
    succeeded). ``extra_durations_s`` are the Initialize and Summarize durations, for the bill.
    """
    plan = load_plan(storage, pointer.bucket, pointer.run_prefix)
    request = plan.request
    results: dict[int, RankResult] = {}
    failed: dict[int, str] = {}
    for rank in range(plan.world_size):
        key = _key(_rank_prefix(pointer.run_prefix, rank), "result.json")
        try:
            result = RankResult.model_validate(_load_json(storage, pointer.bucket, key))
        except ObjectNotFoundError:
            failed[rank] = "no result: the rank did not run or did not finish"
            continue
        except (ValidationError, CosmicAIError) as exc:
            failed[rank] = f"unreadable result: {exc}"
            continue
        results[rank] = result
        if result.status != "ok":
            failed[rank] = result.error or "failed"

    arrays: dict[str, list[np.ndarray[Any, Any]]] = {name: [] for name in _PREDICTIONS}
    for rank, result in sorted(results.items()):
        if result.status != "ok" or result.predictions_key is None:
            continue
        try:
            tensors, _ = decode_tensors(
                storage.get(pointer.bucket, result.predictions_key),
                _PREDICTIONS,
                name=f"predictions of rank {rank}",
            )
        except CosmicAIError as exc:
            failed[rank] = f"predictions unreadable: {exc}"
            continue
        if len(tensors["object_id"]) != result.samples:
            failed[rank] = (
                f"predictions hold {len(tensors['object_id'])} samples, result says "
                f"{result.samples}"
            )
            continue
        for name in arrays:
            arrays[name].append(tensors[name])
    merged = {
        name: np.concatenate(parts) if parts else np.zeros(0, _dtype(_PREDICTIONS[name][0]))
        for name, parts in arrays.items()
    }
    metrics = redshift_metrics(merged["redshift"], merged["z_pred"])
    known = merged["redshift"][np.isfinite(merged["redshift"])].astype(np.float64)
    baseline = float(np.mean(np.abs(known - known.mean()))) if known.size else None
    metrics_source: Literal["rank results", "communicator"] = "rank results"
    comm_summary = None
    if request.communicator != "off":
        from cosmicai.reduction import read_reduced

        reduced = read_reduced(storage, pointer.bucket, pointer.run_prefix)
        # Only a reduction that covers exactly the samples Summarize sees stands for them.
        if (
            reduced is not None
            and not failed
            and reduced.world_size == plan.world_size
            and reduced.samples == len(merged["z_pred"])
            and reduced.samples_with_redshift == known.size
        ):
            metrics, metrics_source = reduced.metrics, "communicator"
        links: Counter[str] = Counter()
        degraded = {}
        for rank, r in sorted(results.items()):
            if r.communicator is None:
                continue
            links.update(r.communicator.links)
            if r.communicator.status != "ok":
                degraded[rank] = r.communicator.reason or "degraded"
        comm_summary = CommSummary(
            mode=request.communicator, links=dict(links), degraded_ranks=degraded
        )

    rows = [_row(rank, results.get(rank), failed.get(rank)) for rank in range(plan.world_size)]
    reported = [r for r in results.values()]
    requests: Counter[str] = Counter(storage.requests)
    for r in reported:
        requests.update(r.s3_requests)
    durations = [r.timings.total_s for r in reported] + list(extra_durations_s)
    map_wall = (
        max(r.finished_at for r in reported) - min(r.started_at for r in reported)
        if reported
        else 0.0
    )
    ok = [r for r in reported if r.rank not in failed]
    samples = sum(r.samples for r in ok)
    data_bytes = sum(r.bytes for r in ok)
    performance = Performance(
        map_wall_s=map_wall,
        samples_per_s=samples / map_wall if map_wall > 0 else 0.0,
        gbit_per_s=data_bytes * 8 / 1e9 / map_wall if map_wall > 0 else 0.0,
        max_rank_s=max((r.timings.total_s for r in reported), default=0.0),
        mean_rank_s=float(np.mean([r.timings.total_s for r in reported])) if reported else 0.0,
        max_peak_rss_mb=max((r.peak_rss_mb for r in reported), default=0.0),
        memory_mb=request.memory_mb,
        cost=estimate_cost(
            durations_s=durations,
            memory_mb=request.memory_mb,
            architecture=request.architecture,
            world_size=plan.world_size,
            s3_requests=requests,
        ),
    )
    outputs = {
        "summary_json": _key(pointer.run_prefix, "summary.json"),
        "summary_md": _key(pointer.run_prefix, "summary.md"),
        "predictions_csv": _key(pointer.run_prefix, "predictions.csv"),
    }
    summary = Summary(
        run_id=plan.run_id,
        status="ok" if not failed else ("partial" if ok else "failed"),
        world_size=plan.world_size,
        ranks_ok=len(ok),
        failed_ranks=failed,
        partitions=sum(r.partitions for r in ok),
        samples=samples,
        samples_with_redshift=int(known.size),
        bytes=data_bytes,
        metrics=metrics,
        metrics_source=metrics_source,
        communicator=comm_summary,
        baseline_mean_mae=baseline,
        performance=performance,
        ranks=rows,
        ignored_fields=list(request.ignored_fields),
        outputs=outputs,
    )
    from cosmicai import plots
    from cosmicai.report import predictions_csv, summary_markdown

    if plots.available():
        for name, png in plots.run_figures(summary, merged, reported).items():
            key = _key(pointer.run_prefix, f"plots/{name}")
            storage.put(pointer.bucket, key, png)
            summary.outputs[f"plot_{name.removesuffix('.png')}"] = key
    storage.put(pointer.bucket, outputs["predictions_csv"], predictions_csv(merged))
    storage.put(pointer.bucket, outputs["summary_md"], summary_markdown(summary).encode())
    _put_json(storage, pointer.bucket, outputs["summary_json"], summary)
    return summary


def _row(rank: int, result: RankResult | None, failure: str | None) -> RankRow:
    if result is None:
        return RankRow(
            rank=rank,
            status="missing",
            partitions=0,
            samples=0,
            bytes=0,
            read_s=0,
            inference_s=0,
            write_s=0,
            total_s=0,
            billed_ms=0,
            peak_rss_mb=0,
            error=failure,
        )
    return RankRow(
        rank=rank,
        status="failed" if failure else "ok",
        partitions=result.partitions,
        samples=result.samples,
        bytes=result.bytes,
        read_s=result.timings.read_s,
        inference_s=result.timings.inference_s,
        write_s=result.timings.write_s,
        total_s=result.timings.total_s,
        billed_ms=billed_ms(result.timings.total_s),
        peak_rss_mb=result.peak_rss_mb,
        error=failure,
    )


def parse_work_item(event: Any) -> WorkItem:
    item: WorkItem = _parse(WorkItem, event, "work item")
    return item


def parse_pointer(event: Any) -> RunPointer:
    pointer: RunPointer = _parse(RunPointer, event, "run pointer")
    return pointer
