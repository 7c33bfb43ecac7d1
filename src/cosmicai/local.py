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

from cosmicai.constants import ENV_RENDEZVOUS, ENV_RENDEZVOUS_SECRET
from cosmicai.exceptions import (
    CosmicAIError,
    InvalidRequestError,
    ObjectNotFoundError,
    RunExistsError,
)
from cosmicai.pipeline import (
    existing_pointer,
    initialize,
    load_manifest,
    load_plan,
    read_rank_result,
    run_rank,
    summarize,
)
from cosmicai.request import revalidate
from cosmicai.run_types import RunLayout, RunPointer, Summary, WorkItem
from cosmicai.storage import Storage, open_storage

if TYPE_CHECKING:
    from types import TracebackType

    from rich.console import Console

    from cosmicai.rendezvous.server.config import ServerConfig
    from cosmicai.request import RunRequest


@dataclass
class LocalRun:
    pointer: RunPointer
    summary: Summary
    rank_errors: dict[int, str] = field(default_factory=dict)
    #: Ranks that ran in this call (on resume, those without an ok result).
    ranks_run: list[int] = field(default_factory=list)
    #: Ranks at once: the smaller of ``--workers`` and the request's ``max_concurrency``.
    concurrency: int = 0


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
    ``config`` replaces that default setup (the tests use short timeouts and a known secret).
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self._config = config
        given = config.secret if config is not None else None
        self._secret = given.decode() if given else secrets.token_urlsafe(32)
        self._ready = threading.Event()
        self._stop: Any = None
        self._loop: Any = None
        self._port = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="rendezvous", daemon=True)

    def _serve(self) -> None:
        import asyncio

        from cosmicai.rendezvous.server import RendezvousServer

        # Only direct-mode runs need the server: other runs never load it.
        from cosmicai.rendezvous.server.config import ServerConfig

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            config = self._config or ServerConfig(
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

    @property
    def port(self) -> int:
        """The port the server listens on, once entered."""
        return self._port

    def __enter__(self) -> dict[str, str]:
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


def local_concurrency(request: RunRequest, workers: int) -> int:
    """Ranks a local run runs at once: ``--workers``, lowered by the request's
    ``max_concurrency`` when it asks for fewer (it is a ceiling, as the Map's is)."""
    if request.max_concurrency is None:
        return workers
    return min(workers, request.max_concurrency)


def run_local(
    request: RunRequest,
    storage_spec: str,
    *,
    workers: int = 2,
    console: Console | None = None,
    resume: bool = False,
) -> LocalRun:
    """Run ``request`` end to end against ``storage_spec`` (``s3`` or a local directory).

    A run id that already has objects is refused (:class:`RunExistsError`), as Step Functions
    refuses a second execution of the same name, unless ``resume``: then the run's own plan is
    kept and only the ranks without an ok result run again (every rank, for a communicator
    run: a reduction needs them all), and Summarize writes the summary anew. With
    ``communicator: direct`` a rendezvous server runs on loopback for the run's ranks.
    """
    storage = open_storage(storage_spec)
    environment: dict[str, str] = {}
    concurrency = local_concurrency(request, workers)
    # The plan records what really runs at once, so Initialize refuses a communicator world
    # larger than that instead of leaving ranks to wait out their deadline for peers.
    request = revalidate(request, max_concurrency=concurrency)
    pointer = _existing_run(request, storage, resume)
    rendezvous = LocalRendezvous() if request.communicator == "direct" else None
    with contextlib.ExitStack() as stack:
        if rendezvous is not None:
            environment = stack.enter_context(rendezvous)
        return _run_stages(
            request, storage, storage_spec, concurrency, environment, console, pointer
        )


def _existing_run(request: RunRequest, storage: Storage, resume: bool) -> RunPointer | None:
    """The run to resume; None for a new run. Refuses a run id that is taken (without
    ``resume``), and a resume whose request differs from the run's."""
    layout = RunLayout(request.run_prefix)
    try:
        taken = next(iter(storage.list(request.bucket, layout.run_prefix)), None) is not None
    except ObjectNotFoundError:  # no bucket yet: certainly no run
        taken = False
    where = f"{storage.description} bucket {request.bucket!r} at {layout.run_prefix!r}"
    if not resume:
        if taken:
            raise RunExistsError(
                f"run_id {request.run_id!r} already has a run in {where}: pass --resume to "
                "finish it, or choose another run_id"
            )
        return None
    if not storage.exists(request.bucket, layout.plan):
        raise InvalidRequestError(
            f"cannot resume run {request.run_id!r}: it has no plan in {where}"
        )
    plan = load_plan(storage, request.bucket, layout.run_prefix)
    # max_concurrency is how this machine runs it, not what the run is.
    skip = {"max_concurrency", "ignored_fields"}
    before = plan.request.model_dump(exclude=skip)
    now = request.model_dump(exclude=skip)
    changed = sorted(name for name in now if before.get(name) != now[name])
    if changed:
        raise InvalidRequestError(
            f"cannot resume run {request.run_id!r}: the request differs from the run's in "
            + ", ".join(changed)
        )
    return existing_pointer(storage, request.bucket, layout.run_prefix)


def _run_stages(
    request: RunRequest,
    storage: Storage,
    storage_spec: str,
    workers: int,
    environment: dict[str, str],
    console: Console | None,
    resumed: RunPointer | None,
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
        pointer = resumed or initialize(request, storage)
        init_s = time.perf_counter() - t0
        bar.advance(stage)
        # The ranks come from the manifest Initialize wrote, as the Map's ItemReader reads them.
        items = load_manifest(storage, pointer)
        if resumed is not None and request.communicator == "off":
            items = [item for item in items if not _finished(storage, pointer, item.rank)]
        elif resumed is not None:
            _forget_reduction(storage, pointer)
        stage = bar.add_task("Distributed Test", total=len(items))
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
    return LocalRun(
        pointer=pointer,
        summary=summary,
        rank_errors=errors,
        ranks_run=[item.rank for item in items],
        concurrency=workers,
    )


def _forget_reduction(storage: Storage, pointer: RunPointer) -> None:
    # The earlier attempt's channel frames are numbered from 0 as the new ones will be: left
    # there, the resumed ranks would read them as their peers' messages.
    layout = RunLayout(pointer.run_prefix)
    for info in list(storage.list(pointer.bucket, layout.comm_prefix)):
        storage.delete(pointer.bucket, info.key)
    storage.delete(pointer.bucket, layout.reduced)


def _finished(storage: Storage, pointer: RunPointer, rank: int) -> bool:
    result = read_rank_result(storage, pointer, rank)
    return result is not None and result.status == "ok"
