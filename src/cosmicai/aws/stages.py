"""What each Lambda function does with its event: parse, call the stage, report, return JSON.

The handlers in ``functions/*/app.py`` are one call into here under the Powertools
decorators. Parsing errors raise :class:`InvalidRequestError` (the Lambda ``errorType`` the
state machine sees), naming every bad field.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cosmicai.constants import (
    ENV_ARCHITECTURE,
    ENV_DATA_PREFIX,
    ENV_DEPLOYMENT_BUCKET,
    ENV_MAX_CONCURRENCY,
    ENV_RESULTS_PREFIX,
    ENV_WORKER_MEMORY_MB,
)
from cosmicai.exceptions import InvalidRequestError, RankFailedError
from cosmicai.pipeline import initialize, parse_pointer, parse_work_item, run_rank, summarize
from cosmicai.request import RunRequest, parse_request, revalidate
from cosmicai.storage import S3Storage, Storage

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics

#: The only metric dimension besides Powertools' service: a handful of values, never a run id
#: or rank (each distinct dimension value is a billed custom metric).
STAGE_DIMENSION = "stage"

T = TypeVar("T")

#: Whether this process has served a worker invocation yet (a Lambda container is cold once).
_served = False


def process_age_s() -> float:
    """Seconds since this process started (Linux), 0 where that cannot be read."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def deployment_request(event: Any) -> RunRequest:
    """The run request of a state machine execution, checked against this deployment."""
    request = parse_request(event)
    problems = []
    bucket = os.environ.get(ENV_DEPLOYMENT_BUCKET)
    if bucket:
        for field, value in (("bucket", request.bucket), ("data_bucket", request.source_bucket)):
            if value != bucket:
                problems.append(f"{field}: {value!r} is not this deployment's bucket {bucket!r}")
    for field, env, value in (
        ("data_prefix", ENV_DATA_PREFIX, request.data_prefix),
        ("result_path", ENV_RESULTS_PREFIX, request.result_path),
    ):
        allowed = os.environ.get(env, "")
        if allowed and not value.startswith(allowed):
            problems.append(f"{field}: {value!r} must start with {allowed!r} in this deployment")
    if problems:
        raise InvalidRequestError("invalid run request: " + "; ".join(problems))
    # The deployment knows what the workers are configured with; the request may still say.
    defaults: dict[str, Any] = {}
    if "memory_mb" not in request.model_fields_set and os.environ.get(ENV_WORKER_MEMORY_MB):
        defaults["memory_mb"] = int(os.environ[ENV_WORKER_MEMORY_MB])
    if "architecture" not in request.model_fields_set and os.environ.get(ENV_ARCHITECTURE):
        defaults["architecture"] = os.environ[ENV_ARCHITECTURE]
    if request.max_concurrency is None and os.environ.get(ENV_MAX_CONCURRENCY):
        defaults["max_concurrency"] = int(os.environ[ENV_MAX_CONCURRENCY])
    if defaults:
        request = revalidate(request, **defaults)
    return request


def _parsed(parse: Callable[[Any], T], event: Any, stage: str, metrics: Metrics | None) -> T:
    """``parse(event)``, counting bad events (a dashboard should show them, not only logs)."""
    try:
        return parse(event)
    except InvalidRequestError:
        if metrics:
            metrics.add_dimension(STAGE_DIMENSION, stage)
            metrics.add_metric("InvalidEvents", "Count", 1)
        raise


def initialize_stage(
    event: Any,
    *,
    storage: Storage | None = None,
    logger: Logger | None = None,
    metrics: Metrics | None = None,
) -> dict[str, Any]:
    request = _parsed(deployment_request, event, "initialize", metrics)
    if logger:
        logger.append_keys(run_id=request.run_id)
        if request.ignored_fields:
            logger.info("ignored request fields", extra={"fields": list(request.ignored_fields)})
    pointer = initialize(request, storage or S3Storage())
    if logger:
        logger.info("run planned", extra=pointer.model_dump())
    if metrics:
        metrics.add_dimension(STAGE_DIMENSION, "initialize")
        metrics.add_metric("Partitions", "Count", pointer.partitions)
        metrics.add_metric("WorldSize", "Count", pointer.world_size)
    return pointer.model_dump()


def worker_stage(
    event: Any,
    *,
    storage: Storage | None = None,
    logger: Logger | None = None,
    metrics: Metrics | None = None,
) -> dict[str, Any]:
    item = _parsed(parse_work_item, event, "worker", metrics)
    if logger:
        logger.append_keys(run_id=item.run_id, rank=item.rank)
    if metrics:
        metrics.add_dimension(STAGE_DIMENSION, "worker")
    try:
        global _served
        # The first invocation of a container carries its start-up (runtime, imports) as the
        # rank's cold start: Lambda bills it as INIT.
        cold_start_s = 0.0 if _served else process_age_s()
        cold_start_cpu_s = 0.0 if _served else time.process_time()
        _served = True
        result = run_rank(
            item,
            storage or S3Storage(),
            cold_start_s=cold_start_s,
            cold_start_cpu_s=cold_start_cpu_s,
        )
    except RankFailedError:
        if logger:
            logger.exception("rank failed")
        if metrics:
            metrics.add_metric("RankFailures", "Count", 1)
        raise
    if logger:
        logger.info("rank done", extra=result.model_dump(include={"samples", "bytes", "timings"}))
    if metrics:
        metrics.add_metric("Samples", "Count", result.samples)
        metrics.add_metric("Bytes", "Bytes", result.bytes)
        metrics.add_metric("RankSeconds", "Seconds", result.timings.total_s)
        metrics.add_metric("InferenceSeconds", "Seconds", result.timings.inference_s)
        metrics.add_metric("ReadSeconds", "Seconds", result.timings.read_s)
        metrics.add_metric("PeakRSS", "Megabytes", result.peak_rss_mb)
    if result.communicator is not None:
        if logger:
            logger.info("reduction with peers", extra=result.communicator.model_dump())
        if metrics:
            metrics.add_metric("ReductionSeconds", "Seconds", result.communicator.seconds)
            degraded = int(result.communicator.status != "ok")
            metrics.add_metric("DegradedReductions", "Count", degraded)
    # Small on purpose: the Map collects these, and the full result is in S3.
    return {
        "rank": result.rank,
        "status": result.status,
        "samples": result.samples,
        "total_s": result.timings.total_s,
    }


def summarize_stage(
    event: Any,
    *,
    storage: Storage | None = None,
    logger: Logger | None = None,
    metrics: Metrics | None = None,
) -> dict[str, Any]:
    pointer = _parsed(parse_pointer, event, "summarize", metrics)
    if logger:
        logger.append_keys(run_id=pointer.run_id)
        if isinstance(event, dict) and event.get("map_error"):
            # The Map failed past its tolerance; summarize what the ranks that finished wrote.
            logger.warning("Distributed Test failed", extra={"map_error": event["map_error"]})
    summary = summarize(pointer, storage or S3Storage())
    if logger:
        logger.info(
            "run summarized", extra={"status": summary.status, "failed_ranks": summary.failed_ranks}
        )
    if metrics:
        metrics.add_dimension(STAGE_DIMENSION, "summarize")
        metrics.add_metric("FailedRanks", "Count", len(summary.failed_ranks))
        metrics.add_metric("RunSamples", "Count", summary.samples)
        metrics.add_metric("MapWallSeconds", "Seconds", summary.performance.map_wall_s)
    return {
        "run_id": summary.run_id,
        "status": summary.status,
        "bucket": pointer.bucket,
        "summary_key": summary.outputs["summary_json"],
        "samples": summary.samples,
        "failed_ranks": {str(k): v[:200] for k, v in list(summary.failed_ranks.items())[:20]},
        "metrics": summary.metrics.model_dump() if summary.metrics else None,
        "cost_usd": summary.performance.cost.total,
    }
