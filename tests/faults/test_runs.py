"""Fault matrix, runs: non-finite predictions, figures that cannot be drawn, a reused run id,
Summarize racing a rank's re-run, --workers against max_concurrency (issue 11, items 6, 8-11).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cosmicai.cli import app
from cosmicai.data.format import Partition, encode_partition
from cosmicai.exceptions import InvalidRequestError, PlanError, RankFailedError, RunExistsError
from cosmicai.local import run_local
from cosmicai.pipeline import initialize, run_rank, summarize
from cosmicai.request import parse_request
from cosmicai.run_types import RunLayout, RunPointer, Summary, WorkItem
from cosmicai.storage import LocalStorage, Storage
from harness.data import BUCKET, make_partition
from harness.onnx_models import linear_model

runner = CliRunner()


def _item(pointer: RunPointer, rank: int) -> WorkItem:
    return WorkItem(
        run_id=pointer.run_id,
        bucket=pointer.bucket,
        run_prefix=pointer.run_prefix,
        rank=rank,
        world_size=pointer.world_size,
    )


def _model(tmp_path: Path) -> str:
    path = tmp_path / "linear.onnx"
    path.write_bytes(linear_model())
    return str(path)


def _put(storage: Storage, number: int, partition: Partition) -> None:
    storage.put(BUCKET, f"data/{number}.safetensors", encode_partition(partition))


def _run_in_process(storage: Storage, model: str, world_size: int) -> Any:
    pointer = initialize(
        parse_request(
            {"bucket": BUCKET, "data_prefix": "data", "model": model, "world_size": world_size}
        ),
        storage,
    )
    for rank in range(world_size):
        run_rank(_item(pointer, rank), storage)
    return pointer, summarize(pointer, storage)


# -- item 8: NaN and inf ---------------------------------------------------------------------


def test_non_finite_predictions_are_counted_and_left_out(
    local_storage: LocalStorage, tmp_path: Path
) -> None:
    # GIVEN 30 galaxies, 3 of them with a NaN or infinite magnitude (so the model's
    # prediction for them is not finite)
    p = make_partition(30)
    magnitudes = p.magnitudes.copy()
    magnitudes[[2, 11, 25], 1] = [np.nan, np.inf, -np.inf]
    _put(local_storage, 1, Partition(p.images, magnitudes, p.object_id, p.redshift))
    # WHEN the run is summarized
    _, summary = _run_in_process(local_storage, _model(tmp_path), 1)
    # THEN the 3 are counted, the metrics are finite (computed on the 27 finite pairs) and
    # the 3 count as outliers
    assert summary.nonfinite_predictions == 3
    m = summary.metrics
    assert m is not None
    assert m.samples == 27
    assert m.nonfinite_predictions == 3
    assert m.r2 is not None
    assert all(np.isfinite([m.mae, m.mse, m.bias, m.nmad, m.r2]))
    assert m.outlier_fraction >= 3 / 30
    assert summary.samples_with_redshift == 30
    # and the report says how many were left out
    markdown = local_storage.get(BUCKET, summary.outputs["summary_md"]).decode()
    assert "non-finite predictions | 3 " in markdown


# -- item 9: figures that cannot be drawn ----------------------------------------------------


@pytest.mark.parametrize("fault", ["inf predictions", "z_spec -1"])
def test_summary_is_written_when_the_redshift_figure_cannot_be_drawn(
    local_storage: LocalStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    pytest.importorskip("matplotlib")
    # GIVEN a run where every Δz is infinite or unknown
    p = make_partition(12)
    magnitudes, z = p.magnitudes, p.redshift
    if fault == "inf predictions":
        magnitudes = np.full_like(p.magnitudes, np.inf)
    else:
        z = np.full_like(p.redshift, -1.0)
    _put(local_storage, 1, Partition(p.images, magnitudes, p.object_id, z))
    # WHEN it is summarized
    with caplog.at_level(logging.INFO, logger="cosmicai.plots"):
        _, summary = _run_in_process(local_storage, _model(tmp_path), 1)
    # THEN the summary is written, the redshift figure skipped with a logged reason, the
    # timeline drawn
    stored = json.loads(local_storage.get(BUCKET, summary.outputs["summary_json"]))
    assert stored["status"] == "ok"
    assert "plot_redshift" not in stored["outputs"]
    assert "plot_timeline" in stored["outputs"]
    assert "figure redshift.png not drawn" in caplog.text


# -- item 11: Summarize racing a rank's re-run -----------------------------------------------


class _RerunBeforePredictionsRead(LocalStorage):
    """A real local store that, the first time Summarize reads a rank's predictions, first
    lets that rank run again to the end: Summarize has read the old result, the re-run
    replaces it. The interleaving that made 2 of 342 summaries partial, made certain."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.rerun: Any = None

    def get(self, bucket: str, key: str) -> bytes | bytearray:
        if self.rerun is not None and "/predictions-" in key:
            rerun, self.rerun = self.rerun, None
            rerun()
        return super().get(bucket, key)


def test_summarize_survives_a_rank_rerun_between_reads(
    local_storage: LocalStorage, tmp_path: Path
) -> None:
    storage = _RerunBeforePredictionsRead(local_storage.root)
    for n in (1, 2):
        _put(storage, n, make_partition(10, first_id=100 * n, seed=n))
    pointer, first = _run_in_process(storage, _model(tmp_path), 2)
    assert first.status == "ok"
    # GIVEN rank 0 re-running after Summarize read its result, before it read the predictions
    storage.rerun = lambda: run_rank(_item(pointer, 0), storage)
    # WHEN Summarize runs through that interleaving
    summary = summarize(pointer, storage)
    # THEN nothing it read was deleted under it: every rank is counted
    assert storage.rerun is None, "the re-run did not happen"
    assert summary.status == "ok", summary.failed_ranks
    assert summary.samples == 20
    # and the next Summarize removes the superseded predictions
    summarize(pointer, storage)
    layout = RunLayout(pointer.run_prefix)
    keys = [o.key for o in storage.list(BUCKET, layout.rank_prefix(0))]
    assert len([k for k in keys if "/predictions-" in k]) == 1


# -- item 10: a reused run id ----------------------------------------------------------------


def _cli_run_files(tmp_path: Path, **fields: Any) -> tuple[Path, Path]:
    store = LocalStorage(tmp_path / "store")
    for n in range(1, 4):
        _put(store, n, make_partition(8 + n, first_id=100 * n, seed=n))
    request = tmp_path / "request.json"
    request.write_text(
        json.dumps(
            {
                "bucket": BUCKET,
                "data_prefix": "data",
                "model": _model(tmp_path),
                "run_id": "reused",
                **fields,
            }
        )
    )
    return tmp_path / "store", request


@pytest.mark.slow
def test_reused_run_id_is_refused_and_resume_finishes_the_run(tmp_path: Path) -> None:
    # GIVEN a run whose rank 1 failed on a corrupt partition
    store, request = _cli_run_files(tmp_path)
    good = (store / BUCKET / "data/2.safetensors").read_bytes()
    (store / BUCKET / "data/2.safetensors").write_bytes(b"corrupt")
    args = ["run", str(request), "--storage", str(store)]
    assert runner.invoke(app, args).exit_code == 1
    summary_file = store / BUCKET / "runs/reused/summary.json"
    before = summary_file.read_bytes()
    assert json.loads(before)["status"] == "partial"
    # WHEN the same request runs again
    again = runner.invoke(app, args)
    # THEN it is refused in one line (exit 2) and the earlier run is untouched
    assert again.exit_code == 2, again.output
    assert "run_id 'reused' already has a run" in again.output
    assert "--resume" in again.output
    assert summary_file.read_bytes() == before
    # WHEN the partition is repaired and the run resumed
    (store / BUCKET / "data/2.safetensors").write_bytes(good)
    rank0 = store / BUCKET / "runs/reused/ranks/00000/result.json"
    rank0_before = rank0.read_bytes()
    resumed = runner.invoke(app, [*args, "--resume"])
    # THEN it succeeds, having run only the failed rank again
    assert resumed.exit_code == 0, resumed.output
    assert rank0.read_bytes() == rank0_before
    summary = json.loads(summary_file.read_text())
    assert summary["status"] == "ok"
    assert summary["samples"] == 9 + 10 + 11


def test_resume_refuses_a_request_that_differs(tmp_path: Path) -> None:
    store, request = _cli_run_files(tmp_path)
    storage = LocalStorage(store)
    initialize(parse_request(json.loads(request.read_text())), storage)
    changed = parse_request({**json.loads(request.read_text()), "batch_size": 7})
    with pytest.raises(InvalidRequestError, match="differs from the run's in batch_size"):
        run_local(changed, str(store), resume=True)


def test_reused_run_id_is_refused_by_the_runner(tmp_path: Path) -> None:
    # GIVEN a run id that already has objects (here, only its plan)
    store, request = _cli_run_files(tmp_path)
    parsed = parse_request(json.loads(request.read_text()))
    initialize(parsed, LocalStorage(store))
    # WHEN run again without --resume / THEN refused before anything is written
    with pytest.raises(RunExistsError):
        run_local(parsed, str(store))


# -- item 6: --workers against a request's max_concurrency -----------------------------------


def test_max_concurrency_above_workers_cannot_strand_communicator_ranks(tmp_path: Path) -> None:
    # GIVEN a communicator run of 3 ranks whose request allows 8 at once, on 2 local workers
    store, request = _cli_run_files(tmp_path, communicator="store", max_concurrency=8)
    parsed = parse_request(json.loads(request.read_text()))
    # WHEN run locally / THEN Initialize refuses at once (2 workers cannot hold 3 ranks
    # that wait for each other), instead of ranks waiting out their deadline
    started = time.monotonic()
    with pytest.raises(PlanError, match="at most 2 can run"):
        run_local(parsed, str(store), workers=2)
    assert time.monotonic() - started < 20


def test_max_concurrency_below_workers_lowers_the_local_concurrency(tmp_path: Path) -> None:
    store, request = _cli_run_files(tmp_path, communicator="store", max_concurrency=2)
    parsed = parse_request(json.loads(request.read_text()))
    with pytest.raises(PlanError, match="at most 2 can run"):
        run_local(parsed, str(store), workers=8)


@pytest.mark.slow
def test_resumed_communicator_run_reduces_afresh(tmp_path: Path) -> None:
    # GIVEN a communicator run whose rank 1 failed (its reduction then misses rank 1's samples)
    store, request = _cli_run_files(tmp_path, communicator="store")
    good = (store / BUCKET / "data/2.safetensors").read_bytes()
    (store / BUCKET / "data/2.safetensors").write_bytes(b"corrupt")
    parsed = parse_request(json.loads(request.read_text()))
    first = run_local(parsed, str(store), workers=3)
    assert first.summary.status == "partial"
    # WHEN the partition is repaired and the run resumed
    (store / BUCKET / "data/2.safetensors").write_bytes(good)
    resumed = run_local(parsed, str(store), workers=3, resume=True)
    # THEN every rank ran again (a reduction needs them all), the earlier frames were not
    # mistaken for new ones, and the metrics come from the new reduction
    assert resumed.ranks_run == [0, 1, 2]
    assert resumed.summary.status == "ok"
    assert resumed.summary.metrics_source == "communicator"
    assert resumed.summary.samples == 9 + 10 + 11


# -- item 12: error names, in process --------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "expected"),
    [("bad model", "BadModelError"), ("corrupt partition", "CorruptPartitionError")],
)
def test_a_rank_fails_with_an_error_named_for_its_cause(
    local_storage: LocalStorage, tmp_path: Path, fault: str, expected: str
) -> None:
    # GIVEN a run whose model is not ONNX, or whose partition is corrupt
    _put(local_storage, 1, make_partition(5))
    model = _model(tmp_path)
    if fault == "bad model":
        Path(model).write_bytes(b"not onnx")
    else:
        local_storage.put(BUCKET, "data/1.safetensors", b"corrupt")
    pointer = initialize(
        parse_request({"bucket": BUCKET, "data_prefix": "data", "model": model}), local_storage
    )
    # WHEN the rank runs / THEN it raises the error named for the cause, naming the rank
    with pytest.raises(RankFailedError) as caught:
        run_rank(_item(pointer, 0), local_storage)
    assert type(caught.value).__name__ == expected
    assert str(caught.value).startswith("rank 0 failed: ")


def test_summary_with_undefined_r2_reads_back(local_storage: LocalStorage, tmp_path: Path) -> None:
    # GIVEN galaxies that all have the same true redshift (R² is undefined: 0/0)
    p = make_partition(6)
    _put(local_storage, 1, Partition(p.images, p.magnitudes, p.object_id, np.full(6, 0.1, "f4")))
    # WHEN summarized
    _, summary = _run_in_process(local_storage, _model(tmp_path), 1)
    # THEN R² is null in the JSON, and the stored summary reads back (as `aws summary` does)
    assert summary.metrics is not None and summary.metrics.r2 is None
    stored = local_storage.get(BUCKET, summary.outputs["summary_json"])
    assert Summary.model_validate_json(stored).metrics == summary.metrics
    assert "undefined" in local_storage.get(BUCKET, summary.outputs["summary_md"]).decode()
