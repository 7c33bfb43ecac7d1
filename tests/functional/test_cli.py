"""The command line, as a user meets it: exit codes, messages, the local runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cosmicai.cli import app
from cosmicai.data.format import encode_partition
from cosmicai.storage import LocalStorage
from harness.data import BUCKET, make_partition
from harness.onnx_models import linear_model

EVENTS = Path(__file__).parents[2] / "events"
runner = CliRunner()


def test_validate_prints_the_normalised_original_payload() -> None:
    result = runner.invoke(app, ["validate", str(EVENTS / "cosmicai-original.json")])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["file_limit"] == 11
    assert printed["ignored_fields"] == ["script", "object_type", "S3_object_name"]


def test_payload_without_bucket_names_bucket_and_shows_no_traceback(tmp_path: Path) -> None:
    payload = json.loads((EVENTS / "cosmicai-original.json").read_text())
    del payload["bucket"]
    request = tmp_path / "request.json"
    request.write_text(json.dumps(payload))
    result = runner.invoke(app, ["validate", str(request)])
    assert result.exit_code == 2
    assert "bucket: required field is missing" in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def local_run(tmp_path: Path) -> tuple[Path, Path]:
    """A store with 5 small partitions, a model file, and a request for 3 ranks."""
    store = LocalStorage(tmp_path / "store")
    for n in range(1, 6):
        store.put(
            BUCKET,
            f"data/{n}.safetensors",
            encode_partition(make_partition(20 + n, first_id=1000 * n, seed=n)),
        )
    model = tmp_path / "linear.onnx"
    model.write_bytes(linear_model())
    request = tmp_path / "request.json"
    request.write_text(
        json.dumps(
            {
                "bucket": BUCKET,
                "data_prefix": "data",
                "world_size": 3,
                "model": str(model),
                "batch_size": 8,
                "run_id": "cli-run",
            }
        )
    )
    return tmp_path / "store", request


def test_plan_prints_ranks_and_partitions(local_run: tuple[Path, Path]) -> None:
    store, request = local_run
    result = runner.invoke(app, ["plan", str(request), "--storage", str(store)])
    assert result.exit_code == 0, result.output
    assert "3 ranks, 5 partitions" in result.output


@pytest.mark.slow
def test_run_executes_every_rank_in_its_own_process(local_run: tuple[Path, Path]) -> None:
    # GIVEN a request for 3 ranks over 5 partitions
    store, request = local_run
    # WHEN run locally, 2 ranks at a time
    result = runner.invoke(app, ["run", str(request), "--storage", str(store), "--workers", "2"])
    # THEN it succeeds, prints the accuracy and performance tables, and stores the summary
    assert result.exit_code == 0, result.output
    assert "MAE" in result.output
    assert "Map wall-clock" in result.output
    summary = json.loads((store / BUCKET / "runs/cli-run/summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["samples"] == sum(20 + n for n in range(1, 6))
    # and the ranks really ran in separate processes (each measured its own peak memory)
    assert all(r["peak_rss_mb"] > 10 for r in summary["ranks"])


@pytest.mark.slow
def test_run_exits_nonzero_naming_the_failed_rank(local_run: tuple[Path, Path]) -> None:
    store, request = local_run
    (store / BUCKET / "data/5.safetensors").write_bytes(b"corrupt")
    result = runner.invoke(app, ["run", str(request), "--storage", str(store)])
    assert result.exit_code == 1
    assert "rank(s) 2 failed" in result.output
    assert "data/5.safetensors" in result.output


def test_plan_of_an_empty_prefix_is_a_clear_error(
    local_run: tuple[Path, Path], tmp_path: Path
) -> None:
    store, _ = local_run
    request = tmp_path / "empty.json"
    request.write_text(json.dumps({"bucket": BUCKET, "data_prefix": "nothing-here"}))
    result = runner.invoke(app, ["plan", str(request), "--storage", str(store)])
    assert result.exit_code == 1
    assert "no partitions" in result.output
    assert "Traceback" not in result.output
