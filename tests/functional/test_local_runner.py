"""The local runner end to end: real rendered data, the shipped model, ranks as processes.

`test_demo_*` is the README's first command in small; `test_run_against_s3_*` runs the same
pipeline against an S3 endpoint (moto's server on loopback), reached by the rank processes
through AWS_ENDPOINT_URL exactly as they would reach a real one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from typer.testing import CliRunner

from cosmicai.cli import app
from cosmicai.data.format import BYTES_PER_SAMPLE
from cosmicai.data.synth import synthesize
from cosmicai.local import run_local
from cosmicai.request import parse_request
from cosmicai.run_types import RunLayout
from cosmicai.storage import Location, S3Storage
from harness.net import free_port

# Whole local runs: every rank a process of its own.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", [None, "builtin:reference"])
def test_demo_predicts_far_better_than_the_mean(tmp_path: Path, model: str | None) -> None:
    # GIVEN the demo, in small: 3 partitions of 1 MB of rendered SDSS test galaxies, with its
    # default model (AstroMAE INT8) or the small reference CNN named
    args = ["demo", "--dir", str(tmp_path), "--partitions", "3", "--partition-size", "1MB"]
    args += ["--model", model] if model else []
    # WHEN it runs
    result = CliRunner().invoke(app, args)
    # THEN it succeeds with the model asked for, every galaxy is predicted, and it beats
    # the mean by far
    assert result.exit_code == 0, result.output
    (summary_file,) = (tmp_path / "store" / "cosmicai-demo" / "runs").glob("*/summary.json")
    summary = json.loads(summary_file.read_text())
    (plan_file,) = (tmp_path / "store" / "cosmicai-demo" / "runs").glob("*/plan.json")
    assert json.loads(plan_file.read_text())["request"]["model"] == (
        model or "builtin:astromae-int8"
    )
    assert summary["status"] == "ok"
    assert summary["world_size"] == 3
    assert summary["samples"] == summary["samples_with_redshift"] == 3 * 51
    metrics = summary["metrics"]
    assert metrics["mae"] < 0.6 * summary["baseline_mean_mae"]
    assert metrics["nmad"] < 0.05
    assert metrics["r2"] > 0.5


@pytest.fixture
def s3_endpoint(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    try:
        yield endpoint
    finally:
        server.stop()


def test_run_against_s3_through_the_endpoint_url(s3_endpoint: str, tmp_path: Path) -> None:
    # GIVEN a dataset in an S3 bucket (rendered straight into it, with large objects read
    # by ranged GETs)
    client = boto3.client("s3")
    client.create_bucket(Bucket="survey")
    storage = S3Storage(client, ranged_get_threshold=256 * 1024)
    synthesize(
        Location(storage, "survey", "1MB/"),
        size_bytes=4 * 51 * BYTES_PER_SAMPLE,
        partition_bytes=2**20,
        processes=1,
    )
    request = parse_request(
        {"bucket": "survey", "data_prefix": "1MB", "world_size": 2, "result_path": "results"}
    )
    # WHEN run with the rank processes talking to S3 themselves
    run = run_local(request, "s3", workers=2)
    # THEN every sample was predicted and the outputs are in the bucket
    assert run.summary.status == "ok", run.summary.failed_ranks
    assert run.summary.samples == 4 * 51
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="survey")["Contents"]}
    layout = RunLayout(request.run_prefix)
    assert layout.summary_json in keys
    assert layout.rank_result(1) in keys
    assert run.summary.performance.cost.s3_requests > 0


@pytest.fixture(scope="module")
def rendered_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 partitions of rendered test galaxies in a local store (shared by the tests below)."""
    from cosmicai.storage import parse_location

    store = tmp_path_factory.mktemp("comm") / "store"
    synthesize(
        parse_location(str(store / "survey" / "p")),
        size_bytes=4 * 30 * BYTES_PER_SAMPLE,
        partition_bytes=30 * BYTES_PER_SAMPLE,
        processes=1,
    )
    return store


@pytest.mark.parametrize("mode", ["store", "direct"])
def test_communicator_gives_the_same_metrics(rendered_store: Path, mode: str) -> None:
    # GIVEN one run without the communicator and one with it, over the same 4 ranks
    base = {"bucket": "survey", "data_prefix": "p", "world_size": 4}
    without = run_local(
        parse_request({**base, "run_id": f"plain-{mode}"}), str(rendered_store), workers=4
    )
    # WHEN the ranks reduce the metrics themselves
    run = run_local(
        parse_request({**base, "run_id": f"comm-{mode}", "communicator": mode}),
        str(rendered_store),
        workers=4,
    )
    # THEN Summarize took the workers' reduction, and it equals the per-rank computation
    summary = run.summary
    assert summary.status == "ok"
    assert summary.metrics_source == "communicator"
    assert summary.communicator is not None and not summary.communicator.degraded_ranks
    assert summary.metrics is not None and without.summary.metrics is not None
    for name, value in without.summary.metrics.model_dump().items():
        assert getattr(summary.metrics, name) == pytest.approx(value, rel=1e-9, abs=1e-15), name
    # and the links used the channel the mode asks for
    kinds = set(summary.communicator.links)
    assert kinds == ({"store"} if mode == "store" else {"tcp"})


def test_communicator_needs_every_rank_running(rendered_store: Path) -> None:
    from cosmicai.exceptions import PlanError

    request = parse_request(
        {"bucket": "survey", "data_prefix": "p", "world_size": 4, "communicator": "store"}
    )
    with pytest.raises(PlanError, match="at most 2 can run"):
        run_local(request, str(rendered_store), workers=2)


def test_failed_rank_still_lets_its_peers_finish_the_reduction(
    rendered_store: Path, tmp_path: Path
) -> None:
    import shutil

    # GIVEN a copy of the dataset with partition 3 corrupt
    store = tmp_path / "store"
    shutil.copytree(rendered_store, store)
    (store / "survey" / "p" / "3.safetensors").write_bytes(b"corrupt")
    request = parse_request(
        {
            "bucket": "survey",
            "data_prefix": "p",
            "world_size": 4,
            "communicator": "store",
            "run_id": "one-fails",
        }
    )
    # WHEN the run executes
    run = run_local(request, str(store), workers=4)
    # THEN rank 2 failed and is named, the others' collectives completed (the failed rank
    # took part with nothing rather than leaving them to time out), and the metrics come
    # from the rank results, which cover exactly the samples that were predicted
    summary = run.summary
    assert summary.status == "partial"
    assert list(summary.failed_ranks) == [2]
    assert summary.metrics_source == "rank results"
    assert summary.communicator is not None
    assert summary.communicator.degraded_ranks == {}
    assert summary.samples == 3 * 30


@pytest.mark.slow
def test_warm_workers_are_reused_and_cold_starts_recorded(rendered_store: Path) -> None:
    # GIVEN 4 ranks and 2 workers
    request = parse_request(
        {"bucket": "survey", "data_prefix": "p", "world_size": 4, "run_id": "warm"}
    )
    pids: dict[int, int] = {}
    # WHEN the run executes
    run = run_local(
        request,
        str(rendered_store),
        workers=2,
        on_rank_start=lambda rank, pid: pids.__setitem__(rank, pid),
    )
    # THEN two processes ran all four ranks; each process's first rank carries its cold
    # start (process start, imports, model load), the ranks it ran warm carry none
    assert run.summary.status == "ok"
    assert len(set(pids.values())) == 2
    rows = {r.rank: r for r in run.summary.ranks}
    firsts = {min(r for r, p in pids.items() if p == pid) for pid in set(pids.values())}
    for rank, row in rows.items():
        if rank in firsts:
            assert row.cold_start_s > 0.05, row
        else:
            assert row.cold_start_s == 0.0, row
    assert run.summary.performance.cost.cold_starts == 2
    assert run.summary.performance.cost.init_gb_seconds > 0
    # and the start-up's CPU time is recorded beside its wall time, no larger than it
    layout = RunLayout(request.run_prefix)
    for rank in firsts:
        result = json.loads((rendered_store / "survey" / layout.rank_result(rank)).read_text())
        timings = result["timings"]
        assert 0 < timings["cold_start_cpu_s"] <= timings["cold_start_s"] + 0.05


@pytest.mark.slow
def test_a_killed_rank_process_fails_only_its_rank(rendered_store: Path) -> None:
    import os
    import signal

    # GIVEN 4 ranks on 1 worker, and rank 1's process killed with SIGKILL (as the OOM killer
    # does) as soon as it takes the rank
    request = parse_request(
        {"bucket": "survey", "data_prefix": "p", "world_size": 4, "run_id": "killed"}
    )
    pids: dict[int, int] = {}

    def kill_rank_1(rank: int, pid: int) -> None:
        pids[rank] = pid
        if rank == 1:
            os.kill(pid, signal.SIGKILL)

    # WHEN the run executes
    run = run_local(request, str(rendered_store), workers=1, on_rank_start=kill_rank_1)
    # THEN only rank 1 failed, named with the signal; ranks 2 and 3 (not started when it
    # died) ran in a fresh, cold worker; the summary is partial and counts their samples
    summary = run.summary
    assert summary.status == "partial"
    assert list(summary.failed_ranks) == [1]
    assert "SIGKILL" in summary.failed_ranks[1]
    assert f"pid {pids[1]}" in summary.failed_ranks[1]
    assert summary.ranks_ok == 3
    assert summary.samples == 3 * 30
    assert pids[2] == pids[3] != pids[1]
    rows = {r.rank: r for r in summary.ranks}
    assert rows[2].cold_start_s > 0 and rows[3].cold_start_s == 0.0
    assert "SIGKILL" in run.rank_errors[1]


@pytest.mark.slow
def test_a_worker_killed_while_idle_fails_no_rank(rendered_store: Path) -> None:
    import os
    import signal

    from cosmicai.local import _WorkerPool
    from cosmicai.pipeline import initialize, load_manifest
    from cosmicai.storage import open_storage

    # GIVEN a planned run of 2 ranks on one worker, killed between its two ranks
    storage = open_storage(str(rendered_store))
    request = parse_request(
        {"bucket": "survey", "data_prefix": "p", "world_size": 2, "run_id": "idle-kill"}
    )
    items = load_manifest(storage, initialize(request, storage))
    pids: dict[int, int] = {}
    outcomes: dict[int, str | None] = {}

    def done(rank: int, error: str | None, lost: bool) -> None:
        outcomes[rank] = error
        if rank == 0:
            os.kill(pids[0], signal.SIGKILL)
            # Until it is gone: the pool must find a dead worker, however loaded the machine.
            (worker,) = (w for w in pool._workers if w.process.pid == pids[0])
            worker.process.join(timeout=30)
            assert not worker.process.is_alive()

    pool = _WorkerPool(1, str(rendered_store), request.model, 1, pids.__setitem__)
    # WHEN the pool runs both ranks
    try:
        pool.run(items, {}, done)
    finally:
        pool.close()
    # THEN the dead idle worker cost no rank: rank 1 ran in a fresh worker
    assert outcomes == {0: None, 1: None}
    assert pids[1] != pids[0]
