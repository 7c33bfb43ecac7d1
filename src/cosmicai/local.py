"""Running a whole run on one machine: Initialize, every rank as its own process, Summarize.

Each rank runs in a fresh process (like a cold Lambda), ``workers`` at a time (like the
Map's MaxConcurrency), so per-rank timings and peak memory mean what they would on Lambda.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any

from cosmicai.exceptions import CosmicAIError
from cosmicai.pipeline import (
    RunPointer,
    Summary,
    WorkItem,
    initialize,
    load_plan,
    run_rank,
    summarize,
)
from cosmicai.storage import open_storage

if TYPE_CHECKING:
    from rich.console import Console

    from cosmicai.request import RunRequest


@dataclass
class LocalRun:
    pointer: RunPointer
    summary: Summary
    rank_errors: dict[int, str] = field(default_factory=dict)


def _rank_process(storage_spec: str, item: dict[str, Any]) -> dict[str, Any]:
    """Entry point of a rank's process; returns the rank result as plain data."""
    storage = open_storage(storage_spec)
    return run_rank(WorkItem.model_validate(item), storage).model_dump()


def _rank_environment() -> None:
    # A Lambda worker has a vCPU share, not the host: keep numeric libraries single-threaded
    # unless the request asks ONNX Runtime for more.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_local(
    request: RunRequest,
    storage_spec: str,
    *,
    workers: int = 2,
    console: Console | None = None,
) -> LocalRun:
    """Run ``request`` end to end against ``storage_spec`` (``s3`` or a local directory)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    storage = open_storage(storage_spec)
    errors: dict[int, str] = {}
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=console is None) as bar:
        stage = bar.add_task("Initialize", total=1)
        t0 = time.perf_counter()
        pointer = initialize(request, storage)
        init_s = time.perf_counter() - t0
        bar.advance(stage)
        plan = load_plan(storage, pointer.bucket, pointer.run_prefix)
        items = [
            WorkItem(
                run_id=pointer.run_id,
                bucket=pointer.bucket,
                run_prefix=pointer.run_prefix,
                rank=rank,
                world_size=plan.world_size,
            )
            for rank in range(plan.world_size)
        ]
        stage = bar.add_task("Distributed Test", total=len(items))
        with ProcessPoolExecutor(
            max_workers=max(1, min(workers, len(items))),
            mp_context=get_context("spawn"),
            max_tasks_per_child=1,
            initializer=_rank_environment,
        ) as pool:
            pending: dict[Future[dict[str, Any]], int] = {
                pool.submit(_rank_process, storage_spec, item.model_dump()): item.rank
                for item in items
            }
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    rank = pending.pop(future)
                    try:
                        future.result()
                    except CosmicAIError as exc:
                        errors[rank] = str(exc)
                    except BrokenProcessPool:
                        errors[rank] = "the rank's process died (killed or out of memory)"
                    bar.advance(stage)
        stage = bar.add_task("Summarize", total=1)
        summary = summarize(pointer, storage, extra_durations_s=(init_s,))
        bar.advance(stage)
    return LocalRun(pointer=pointer, summary=summary, rank_errors=errors)
