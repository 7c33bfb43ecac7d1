"""The three stages of a run: initialize, worker (one per rank) and summarize.

They are plain functions of (event, storage). The Lambda handlers and the local runner call the
same functions; nothing here knows where it runs. What the stages hand each other and where a
run keeps its objects (:class:`~cosmicai.run_types.RunLayout`) live in
:mod:`cosmicai.run_types`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cosmicai import plots
from cosmicai.constants import ENV_MAP_CHILD_TYPE
from cosmicai.cost import billed_ms, estimate_cost
from cosmicai.data.format import Partition, decode_partition, decode_tensors, encode_tensors
from cosmicai.data.partitioner import DATASET_INDEX, list_numbered
from cosmicai.exceptions import (
    BadModelError,
    CorruptPartitionError,
    CosmicAIError,
    InvalidRequestError,
    InvalidRunError,
    ModelError,
    ObjectNotFoundError,
    PartitionFormatError,
    PlanError,
    RankFailedError,
    StorageUnavailableError,
    TransientStorageError,
)
from cosmicai.metrics import known_redshift, redshift_metrics
from cosmicai.model import get_model
from cosmicai.reduction import read_reduced, reduce_with_peers
from cosmicai.report import predictions_csv, summary_markdown
from cosmicai.request import RunRequest
from cosmicai.run_types import (
    PREDICTIONS,
    CommSummary,
    PartitionRef,
    Performance,
    Plan,
    RankPlan,
    RankResult,
    RankRow,
    RunLayout,
    RunPointer,
    Summary,
    Timings,
    WorkItem,
    empty_predictions,
    new_attempt,
    prediction_dtype,
)
from cosmicai.storage import Storage, join_key

logger = logging.getLogger(__name__)

#: What a rank raises for each cause (the class name is the Lambda errorType the state
#: machine matches): transient storage faults are retried, the others fail at once.
_RANK_ERRORS: tuple[tuple[type[Exception], type[RankFailedError]], ...] = (
    (TransientStorageError, StorageUnavailableError),
    (PartitionFormatError, CorruptPartitionError),
    (ModelError, BadModelError),
    (InvalidRequestError, InvalidRunError),
)


def rank_error(rank: int, exc: Exception, message: str) -> RankFailedError:
    """The error a failed rank raises: named for its cause, the rank in the message."""
    kind = next((named for cause, named in _RANK_ERRORS if isinstance(exc, cause)), None)
    return (kind or RankFailedError)(f"rank {rank} failed: {message}")


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
    """Peak resident memory of this process so far, in MiB.

    Linux: VmHWM from /proc/self/status. Not ru_maxrss, which Linux carries over from the
    parent across fork + exec: a worker started by a process that had loaded a model would
    report the parent's peak as its own. Elsewhere ru_maxrss (KiB on Linux, bytes on macOS).
    """
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # kB
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
    counts = _index_counts(storage, bucket, join_key(prefix, DATASET_INDEX))
    for ref in found:
        if ref.number in counts and counts[ref.number][1] == ref.bytes:
            ref.samples = counts[ref.number][0]
    return found


class _IndexEntry(BaseModel):
    model_config = ConfigDict(strict=True)

    number: int = Field(ge=1)
    samples: int = Field(ge=0)
    bytes: int = Field(ge=0)


def _index_counts(storage: Storage, bucket: str, key: str) -> dict[int, tuple[int, int]]:
    """(samples, bytes) by partition number from the dataset index; an index that is there
    but wrong is refused, naming the object and the fault (a plan's sample counts must not
    come from a corrupt file)."""
    try:
        raw = storage.get(bucket, key)
    except ObjectNotFoundError:
        return {}
    try:
        index = json.loads(raw)
    except RecursionError:
        raise PlanError(f"dataset index {bucket}/{key} is nested too deeply") from None
    except ValueError as exc:
        raise PlanError(f"dataset index {bucket}/{key} is not valid JSON: {exc}") from None
    if not isinstance(index, dict):
        raise PlanError(f"dataset index {bucket}/{key} is not a JSON object")
    entries = index.get("partitions")
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise PlanError(f"dataset index {bucket}/{key}: partitions is not a list")
    counts = {}
    for position, entry in enumerate(entries):
        try:
            parsed = _IndexEntry.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors()
            )
            raise PlanError(
                f"dataset index {bucket}/{key}: partitions[{position}] is wrong ({problems})"
            ) from None
        counts[parsed.number] = (parsed.samples, parsed.bytes)
    return counts


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
    layout = RunLayout(request.run_prefix)
    pointer = RunPointer(
        run_id=request.run_id,
        bucket=request.bucket,
        run_prefix=layout.run_prefix,
        plan_key=layout.plan,
        manifest_key=layout.manifest,
        world_size=plan.world_size,
        partitions=plan.partitions,
        bytes=plan.bytes,
    )
    items = [item.model_dump() for item in pointer.work_items()]
    _put_json(storage, request.bucket, layout.request, request)
    _put_json(storage, request.bucket, pointer.plan_key, plan)
    _put_json(storage, request.bucket, pointer.manifest_key, items)
    return pointer


def existing_pointer(storage: Storage, bucket: str, run_prefix: str) -> RunPointer:
    """The pointer Initialize returned for a run that already has a plan (to resume it)."""
    plan = load_plan(storage, bucket, run_prefix)
    layout = RunLayout(run_prefix)
    return RunPointer(
        run_id=plan.run_id,
        bucket=bucket,
        run_prefix=run_prefix,
        plan_key=layout.plan,
        manifest_key=layout.manifest,
        world_size=plan.world_size,
        partitions=plan.partitions,
        bytes=plan.bytes,
    )


def load_plan(storage: Storage, bucket: str, run_prefix: str) -> Plan:
    plan: Plan = _parse(Plan, _load_json(storage, bucket, RunLayout(run_prefix).plan), "plan")
    return plan


def load_manifest(storage: Storage, pointer: RunPointer) -> list[WorkItem]:
    """The Distributed Map's items, as Initialize wrote them (the local runner reads them
    the way the Map's ItemReader does)."""
    data = _load_json(storage, pointer.bucket, pointer.manifest_key)
    if not isinstance(data, list):
        raise CosmicAIError(f"{pointer.bucket}/{pointer.manifest_key} is not a list of items")
    return [parse_work_item(item) for item in data]


# -- Worker --------------------------------------------------------------------------------


def _read_partition(storage: Storage, bucket: str, key: str) -> tuple[bytes | bytearray, Partition]:
    raw = storage.get(bucket, key)  # not copied: the partition's arrays are views of it
    return raw, decode_partition(raw, name=f"partition {bucket}/{key}")


def _prefetched(
    storage: Storage, bucket: str, refs: Sequence[PartitionRef]
) -> Iterator[tuple[PartitionRef, bytes | bytearray, Partition, float]]:
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


def run_rank(
    item: WorkItem, storage: Storage, *, cold_start_s: float = 0.0, cold_start_cpu_s: float = 0.0
) -> RankResult:
    """Infer every partition of one rank and write its predictions and result.

    The predictions go to a file named by this attempt, then the result (which names that
    file) replaces any earlier one in one PUT: a reader sees the old attempt or the new one,
    whole. A rank that fails writes a failed result naming the cause and raises
    :class:`RankFailedError` (a subclass naming the cause: see :func:`rank_error`), so the Map
    counts it and Summarize can name it. An earlier attempt's predictions stay: a Summarize
    may have read the result naming them a moment ago; Summarize removes them.
    ``cold_start_s`` is the worker's start-up before this handler ran (0 when warm), and
    ``cold_start_cpu_s`` the CPU time it took.
    """
    started_at, start = time.time(), time.perf_counter()
    attempt = new_attempt()
    timings = Timings(cold_start_s=cold_start_s, cold_start_cpu_s=cold_start_cpu_s)
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

    layout = RunLayout(item.run_prefix)
    result_key = layout.rank_result(item.rank)
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
        chunks: dict[str, list[np.ndarray[Any, Any]]] = {name: [] for name in PREDICTIONS}
        for ref, raw, partition, waited in _prefetched(
            storage, plan.data_bucket, plan.ranks[item.rank].partitions
        ):
            t1, c1 = time.perf_counter(), time.process_time()
            for batch in partition.batches(request.inference_batch(model.threads)):
                chunks["z_pred"].append(model.predict(batch.images, batch.magnitudes))
            timings.read_s += waited
            timings.inference_s += time.perf_counter() - t1
            timings.inference_cpu_s += time.process_time() - c1
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
            name: np.concatenate(parts).astype(prediction_dtype(name))
            if parts
            else np.zeros(0, prediction_dtype(name))
            for name, parts in chunks.items()
        }
        predictions_key = layout.predictions(item.rank, attempt)
        storage.put(
            item.bucket,
            predictions_key,
            encode_tensors(predictions, {"run_id": item.run_id, "rank": str(item.rank)}),
        )
        timings.write_s = time.perf_counter() - t2
        done = result("ok", predictions_key=predictions_key)
        _put_json(storage, item.bucket, result_key, done)
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
            reduce_with_peers(item, request, storage, empty_predictions())
        raise rank_error(item.rank, exc, message) from exc
    if request.communicator == "off":
        return done
    # After the rank's own result is written: a failed collective loses nothing, it only
    # sends Summarize back to reading every rank's result.
    done = done.model_copy(
        update={"communicator": reduce_with_peers(item, request, storage, predictions)}
    )
    _put_json(storage, item.bucket, result_key, done)
    return done


def _read_result(storage: Storage, bucket: str, key: str) -> RankResult | None:
    try:
        return RankResult.model_validate(_load_json(storage, bucket, key))
    except (ObjectNotFoundError, ValidationError, CosmicAIError):
        return None


def read_rank_result(storage: Storage, pointer: RunPointer, rank: int) -> RankResult | None:
    """A rank's result, or None when it has none (or none that can be read)."""
    return _read_result(storage, pointer.bucket, RunLayout(pointer.run_prefix).rank_result(rank))


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
    layout = RunLayout(pointer.run_prefix)
    results: dict[int, RankResult] = {}
    failed: dict[int, str] = {}
    for rank in range(plan.world_size):
        try:
            result = RankResult.model_validate(
                _load_json(storage, pointer.bucket, layout.rank_result(rank))
            )
        except ObjectNotFoundError:
            failed[rank] = "no result: the rank did not run or did not finish"
            continue
        except (ValidationError, CosmicAIError) as exc:
            failed[rank] = f"unreadable result: {exc}"
            continue
        results[rank] = result
        if result.status != "ok":
            failed[rank] = result.error or "failed"

    arrays: dict[str, list[np.ndarray[Any, Any]]] = {name: [] for name in PREDICTIONS}
    for rank, result in sorted(results.items()):
        if result.status != "ok" or result.predictions_key is None:
            continue
        try:
            tensors, _ = decode_tensors(
                storage.get(pointer.bucket, result.predictions_key),
                PREDICTIONS,
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
        name: np.concatenate(parts) if parts else np.zeros(0, prediction_dtype(name))
        for name, parts in arrays.items()
    }
    metrics = redshift_metrics(merged["redshift"], merged["z_pred"])
    known_mask = known_redshift(merged["redshift"])
    nonfinite = int(np.sum(known_mask & ~np.isfinite(merged["z_pred"])))
    known = merged["redshift"][known_mask].astype(np.float64)
    baseline = float(np.mean(np.abs(known - known.mean()))) if known.size else None
    metrics_source: Literal["rank results", "communicator"] = "rank results"
    comm_summary = None
    if request.communicator != "off":
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
    # The Map's wall-clock starts when the first worker started, cold start included.
    map_wall = (
        max(r.finished_at for r in reported)
        - min(r.started_at - r.timings.cold_start_s for r in reported)
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
            init_s=[r.timings.cold_start_s for r in reported],
            map_child_type=_map_child_type(),
            child_durations_s=[r.timings.total_s + r.timings.cold_start_s for r in reported],
            rendezvous_s=map_wall if request.communicator == "direct" else 0.0,
        ),
    )
    outputs = {
        "summary_json": layout.summary_json,
        "summary_md": layout.summary_md,
        "predictions_csv": layout.predictions_csv,
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
        nonfinite_predictions=nonfinite,
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
    if nonfinite:
        logger.warning(
            "%d predictions are NaN or infinite: counted as outliers, left out of the other "
            "metrics",
            nonfinite,
        )
    # The summary first: nothing after it (figures, tidying) may cost the run its summary.
    storage.put(pointer.bucket, outputs["predictions_csv"], predictions_csv(merged))
    _write_summary(storage, pointer.bucket, summary)
    if plots.available():
        for name, png in plots.run_figures(summary, merged, reported).items():
            key = layout.plot(name)
            storage.put(pointer.bucket, key, png)
            summary.outputs[f"plot_{name.removesuffix('.png')}"] = key
        if any(name.startswith("plot_") for name in summary.outputs):
            _write_summary(storage, pointer.bucket, summary)
    _remove_superseded_predictions(storage, pointer.bucket, layout, results)
    return summary


def _write_summary(storage: Storage, bucket: str, summary: Summary) -> None:
    storage.put(bucket, summary.outputs["summary_md"], summary_markdown(summary).encode())
    _put_json(storage, bucket, summary.outputs["summary_json"], summary)


def _remove_superseded_predictions(
    storage: Storage, bucket: str, layout: RunLayout, results: dict[int, RankResult]
) -> None:
    """Delete the predictions of attempts older than the one each rank's result names.

    Done here, not by the rank that replaces them: a Summarize that read the old result just
    before would otherwise find its predictions gone. Newer attempts (a re-run still going)
    are left alone: their result may not be written yet.
    """
    try:
        for info in storage.list(bucket, layout.key("ranks/")):
            rank_part = info.key[len(layout.key("ranks/")) :].split("/", 1)[0]
            if not rank_part.isdigit() or int(rank_part) not in results:
                continue
            rank = int(rank_part)
            attempt = layout.predictions_attempt(rank, info.key)
            if attempt is not None and attempt < results[rank].attempt:
                storage.delete(bucket, info.key)
    except CosmicAIError as exc:  # tidiness only: the summary is already written
        logger.warning("could not remove superseded predictions: %s", exc)


def _map_child_type() -> Literal["STANDARD", "EXPRESS"]:
    # Set by the template from its MapChildType parameter; local runs price STANDARD children.
    value = os.environ.get(ENV_MAP_CHILD_TYPE, "STANDARD").strip().upper()
    return "EXPRESS" if value == "EXPRESS" else "STANDARD"


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
        cold_start_s=result.timings.cold_start_s,
        billed_ms=billed_ms(result.timings.total_s, result.timings.cold_start_s),
        peak_rss_mb=result.peak_rss_mb,
        error=failure,
    )


def parse_work_item(event: Any) -> WorkItem:
    item: WorkItem = _parse(WorkItem, event, "work item")
    return item


def parse_pointer(event: Any) -> RunPointer:
    pointer: RunPointer = _parse(RunPointer, event, "run pointer")
    return pointer
