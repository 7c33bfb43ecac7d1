"""Running a whole run on one machine: Initialize, the ranks in worker processes, Summarize.

Ranks run ``workers`` at a time (like the Map's MaxConcurrency) in worker processes that behave
like Lambda containers: a fresh process starts, imports the package and loads the model (its
cold start, recorded on the first rank it runs and billed like Lambda's INIT), then runs rank
after rank while it is warm. Peak RSS is the process's, as Lambda's "max memory used" is the
container's. A worker that dies (SIGKILL, as the OOM killer sends) fails only the rank it held,
named with the signal; a fresh cold worker takes the remaining ranks.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as connection_wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from cosmicai.constants import ENV_ORT_THREADS, ENV_RENDEZVOUS, ENV_RENDEZVOUS_SECRET
from cosmicai.exceptions import (
    CosmicAIError,
    InvalidRequestError,
    ObjectNotFoundError,
    RunExistsError,
)
from cosmicai.model import available_cpus
from cosmicai.pipeline import (
    existing_pointer,
    initialize,
    load_manifest,
    load_plan,
    read_rank_result,
    summarize,
)
from cosmicai.request import revalidate
from cosmicai.run_types import RankResult, RunLayout, RunPointer, Summary, WorkItem
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


def _worker_main(
    conn: Connection, spawned_at: float, storage_spec: str, model: str, threads: int
) -> None:
    """A worker process: start up like a Lambda container's INIT, then run ranks until told
    to stop. The first rank it runs carries the start-up time as its cold start."""
    # A Lambda worker has a vCPU share, not the host: keep numeric libraries single-threaded
    # unless the request asks ONNX Runtime for more.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from cosmicai.model import get_model
    from cosmicai.pipeline import run_rank

    with contextlib.suppress(Exception):
        # Loaded here so a warm worker's ranks reuse it; a model that fails to load fails
        # each rank, with its reason, when the rank asks for it.
        get_model(model, threads=threads, storage=open_storage(storage_spec))
    cold_start_s = time.time() - spawned_at
    cold_start_cpu_s = time.process_time()
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        item, environment = task
        # Passed per task rather than inherited, so a secret never lingers in the parent.
        os.environ.update(environment)
        try:
            # A storage per rank, as a Lambda invocation makes: request counts are the rank's.
            result = run_rank(
                WorkItem.model_validate(item),
                open_storage(storage_spec),
                cold_start_s=cold_start_s,
                cold_start_cpu_s=cold_start_cpu_s,
            )
            conn.send(("ok", result.model_dump()))
        except CosmicAIError as exc:
            conn.send(("error", str(exc)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        cold_start_s = cold_start_cpu_s = 0.0


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    rank: int | None = None
    assigned_at: float = 0.0


class _WorkerPool:
    """At most ``size`` worker processes, each reused for rank after rank while it lives (as
    Lambda reuses a warm container); a worker that dies fails only the rank it held and is
    replaced by a fresh, cold one when there is more work."""

    def __init__(
        self,
        size: int,
        storage_spec: str,
        model: str,
        threads: int,
        on_rank_start: Callable[[int, int], None] | None = None,
    ) -> None:
        self.size = size
        self._args = (storage_spec, model, threads)
        self._context = get_context("spawn")
        self._workers: list[_Worker] = []
        self._on_rank_start = on_rank_start

    def _spawn(self) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(child, time.time(), *self._args), daemon=True
        )
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self._workers.append(worker)
        return worker

    def run(
        self,
        items: list[WorkItem],
        environment: dict[str, str],
        on_done: Callable[[int, str | None, bool], None],
    ) -> None:
        """Run every item; ``on_done(rank, error, lost)`` after each: error is None when the
        rank succeeded, lost is true when its process died without a word."""
        queue = deque(items)
        while queue or any(w.rank is not None for w in self._workers):
            while queue:
                idle = [w for w in self._workers if w.rank is None]
                if idle and not idle[0].process.is_alive():
                    self._died(idle[0], on_done)  # died while idle: it held no rank
                    continue
                if idle:
                    worker = idle[0]
                elif len(self._workers) < self.size:
                    worker = self._spawn()
                else:
                    break
                item = queue.popleft()
                try:
                    worker.conn.send((item.model_dump(), environment))
                except OSError:
                    # The worker died while idle: the rank never reached it, so it waits for
                    # the next worker rather than failing.
                    queue.appendleft(item)
                    self._died(worker, on_done)
                    continue
                worker.rank, worker.assigned_at = item.rank, time.time()
                if self._on_rank_start is not None:
                    self._on_rank_start(item.rank, worker.process.pid or 0)
            watched: list[Any] = [w.conn for w in self._workers]
            watched += [w.process.sentinel for w in self._workers]
            ready = set(connection_wait(watched))
            for worker in list(self._workers):
                if worker.conn in ready:
                    try:
                        status, payload = worker.conn.recv()
                    except (EOFError, OSError):
                        self._died(worker, on_done)
                        continue
                    rank, worker.rank = worker.rank, None
                    if rank is not None:
                        on_done(rank, None if status == "ok" else str(payload), False)
                elif worker.process.sentinel in ready:
                    self._died(worker, on_done)

    def _died(self, worker: _Worker, on_done: Callable[[int, str | None, bool], None]) -> None:
        worker.process.join()
        self._workers.remove(worker)
        worker.conn.close()
        if worker.rank is None:
            return
        code = worker.process.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"was killed by {name}"
            if -code == signal.SIGKILL:
                how += " (killed, or out of memory)"
        else:
            how = f"exited with status {code}"
        on_done(
            worker.rank,
            f"rank {worker.rank}'s worker process (pid {worker.process.pid}) {how}",
            True,
        )

    def close(self) -> None:
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        deadline = time.monotonic() + 10
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers.clear()


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
    on_rank_start: Callable[[int, int], None] | None = None,
) -> LocalRun:
    """Run ``request`` end to end against ``storage_spec`` (``s3`` or a local directory).

    A run id that already has objects is refused (:class:`RunExistsError`), as Step Functions
    refuses a second execution of the same name, unless ``resume``: then the run's own plan is
    kept and only the ranks without an ok result run again (every rank, for a communicator
    run: a reduction needs them all), and Summarize writes the summary anew. With
    ``communicator: direct`` a rendezvous server runs on loopback for the run's ranks.
    ``on_rank_start(rank, pid)`` is told which worker process took each rank.
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
            request,
            storage,
            storage_spec,
            concurrency,
            environment,
            console,
            pointer,
            on_rank_start,
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


def _record_lost_rank(
    storage: Storage, pointer: RunPointer, layout: RunLayout, rank: int, error: str
) -> None:
    """Write a failed result for a rank whose process died before it could write one (as the
    Map records a failed child), so Summarize names the rank and the signal."""
    key = layout.rank_result(rank)
    with contextlib.suppress(ObjectNotFoundError):
        previous = RankResult.model_validate_json(storage.get(pointer.bucket, key))
        if previous.status == "ok":
            return
    now = time.time()
    lost = RankResult(
        run_id=pointer.run_id,
        rank=rank,
        status="failed",
        attempt="lost",
        started_at=now,
        finished_at=now,
        peak_rss_mb=0.0,
        error=error,
    )
    storage.put(pointer.bucket, key, lost.model_dump_json(indent=2).encode())


def _run_stages(
    request: RunRequest,
    storage: Storage,
    storage_spec: str,
    workers: int,
    environment: dict[str, str],
    console: Console | None,
    resumed: RunPointer | None,
    on_rank_start: Callable[[int, int], None] | None = None,
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
        layout = RunLayout(pointer.run_prefix)

        def done(rank: int, error: str | None, lost: bool) -> None:
            if error is not None:
                errors[rank] = error
            if lost and error is not None:
                _record_lost_rank(storage, pointer, layout, rank, error)
            bar.advance(stage)

        running = max(1, min(workers, len(items)))
        threads = request.ort_threads or int(os.environ.get(ENV_ORT_THREADS) or 0)
        if not threads:
            # The ranks running at once share this machine's CPUs, as Lambdas each have their
            # own: split them, so that workers' ONNX Runtime pools do not oversubscribe it.
            threads = max(1, available_cpus() // running)
        # The workers load the model with these threads before their first rank, and the rank
        # asks for the same (through the environment): one session per worker.
        environment = {**environment, ENV_ORT_THREADS: str(threads)}
        pool = _WorkerPool(running, storage_spec, request.model, threads, on_rank_start)
        try:
            pool.run(items, environment, done)
        finally:
            pool.close()
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
