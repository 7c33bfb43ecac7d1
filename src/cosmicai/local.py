"""Running a whole run on one machine: Initialize, every rank as its own process, Summarize.

Each rank runs in a fresh process (like a cold Lambda), ``workers`` at a time (like the
Map's MaxConcurrency), so per-rank timings and peak memory mean what they would on Lambda.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any

from cosmicai.constants import ENV_ORT_THREADS
from cosmicai.exceptions import CosmicAIError
from cosmicai.model import available_cpus
from cosmicai.pipeline import (
    RunPointer,
    Summary,
    WorkItem,
    initialize,
    load_plan,
    run_rank,
    summarize,
)
from cosmicai.request import parse_request
from cosmicai.storage import Storage, open_storage

if TYPE_CHECKING:
    from types import TracebackType

    from rich.console import Console

    from cosmicai.request import RunRequest


@dataclass
class LocalRun:
    pointer: RunPointer
    summary: Summary
    rank_errors: dict[int, str] = field(default_factory=dict)


def _rank_process(
    storage_spec: str, item: dict[str, Any], environment: dict[str, str]
) -> dict[str, Any]:
    """Entry point of a rank's process; returns the rank result as plain data."""
    # Passed per task rather than set in the parent, so a secret never lingers there.
    os.environ.update(environment)
    storage = open_storage(storage_spec)
    return run_rank(WorkItem.model_validate(item), storage).model_dump()


class LocalRendezvous:
    """A rendezvous server on loopback for one local run, in a thread of this process.

    Entering it starts the server with a fresh secret and returns the environment the rank
    processes need to reach it (the same variables a Lambda worker gets from the template).
    """

    def __init__(self) -> None:
        self._secret = secrets.token_urlsafe(32)
        self._ready = threading.Event()
        self._stop: Any = None
        self._loop: Any = None
        self._port = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="rendezvous", daemon=True)

    def _serve(self) -> None:
        import asyncio

        from cosmicai.rendezvous.config import ServerConfig
        from cosmicai.rendezvous.server import RendezvousServer

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            config = ServerConfig(
                host="127.0.0.1", port=0, health_port=0, secret=self._secret.encode()
            )
            async with RendezvousServer(config) as server:
                self._port = server.port
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the thread that waits for readiness
            self._error = exc
            self._ready.set()

    def __enter__(self) -> dict[str, str]:
        from cosmicai.constants import ENV_RENDEZVOUS, ENV_RENDEZVOUS_SECRET

        self._thread.start()
        if not self._ready.wait(timeout=30) or self._error is not None:
            raise CosmicAIError(f"the local rendezvous server did not start: {self._error}")
        return {ENV_RENDEZVOUS: f"127.0.0.1:{self._port}", ENV_RENDEZVOUS_SECRET: self._secret}

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


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
    """Run ``request`` end to end against ``storage_spec`` (``s3`` or a local directory).

    With ``communicator: direct`` a rendezvous server runs on loopback for the run's ranks.
    """
    storage = open_storage(storage_spec)
    environment: dict[str, str] = {}
    if request.communicator != "off" and request.max_concurrency is None:
        # Ranks beyond the workers would wait for peers that cannot start: let Initialize
        # refuse that instead of hanging.
        request = parse_request(
            {
                **request.model_dump(exclude_unset=True),
                "run_id": request.run_id,
                "max_concurrency": workers,
            }
        )
    rendezvous = LocalRendezvous() if request.communicator == "direct" else None
    with contextlib.ExitStack() as stack:
        if rendezvous is not None:
            environment = stack.enter_context(rendezvous)
        return _run_stages(request, storage, storage_spec, workers, environment, console)


def _run_stages(
    request: RunRequest,
    storage: Storage,
    storage_spec: str,
    workers: int,
    environment: dict[str, str],
    console: Console | None,
) -> LocalRun:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

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
        if ENV_ORT_THREADS not in os.environ:
            # The ranks running at once share this machine's CPUs, as Lambdas each have their
            # own: split them, so that workers' ONNX Runtime pools do not oversubscribe it.
            running = max(1, min(workers, len(items)))
            environment = {
                **environment,
                ENV_ORT_THREADS: str(max(1, available_cpus() // running)),
            }
        with ProcessPoolExecutor(
            max_workers=max(1, min(workers, len(items))),
            mp_context=get_context("spawn"),
            max_tasks_per_child=1,
            initializer=_rank_environment,
        ) as pool:
            pending: dict[Future[dict[str, Any]], int] = {
                pool.submit(_rank_process, storage_spec, item.model_dump(), environment): item.rank
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
