"""The three stages end to end, in-process, against moto S3 and a local directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cosmicai.data.format import encode_partition
from cosmicai.exceptions import RankFailedError
from cosmicai.metrics import redshift_metrics
from cosmicai.pipeline import initialize, run_rank, summarize
from cosmicai.request import parse_request
from cosmicai.run_types import RankResult, RunLayout, RunPointer, WorkItem
from cosmicai.storage import LocalStorage, S3Storage, Storage
from harness.data import BUCKET, make_partition
from harness.onnx_models import linear_model, linear_prediction

SIZES = (40, 25, 33, 17)  # samples in partitions 1..4


@pytest.fixture
def model_spec(storage: Storage, tmp_path: Path) -> str:
    data = linear_model()
    if isinstance(storage, S3Storage):
        storage.put(BUCKET, "models/linear.onnx", data)
        return f"s3://{BUCKET}/models/linear.onnx"
    path = tmp_path / "linear.onnx"
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def dataset(storage: Storage) -> list[Any]:
    partitions = []
    first = 0
    for number, size in enumerate(SIZES, start=1):
        partition = make_partition(size, first_id=first, seed=number)
        storage.put(BUCKET, f"data/{number}.safetensors", encode_partition(partition))
        partitions.append(partition)
        first += size
    return partitions


def _start(storage: Storage, model: str, **fields: Any) -> RunPointer:
    request = parse_request(
        {"bucket": BUCKET, "data_prefix": "data", "model": model, "batch_size": 16, **fields}
    )
    return initialize(request, storage)


def _item(pointer: RunPointer, rank: int) -> WorkItem:
    return WorkItem(
        run_id=pointer.run_id,
        bucket=pointer.bucket,
        run_prefix=pointer.run_prefix,
        rank=rank,
        world_size=pointer.world_size,
    )


def _result(storage: Storage, pointer: RunPointer, rank: int) -> RankResult:
    key = RunLayout(pointer.run_prefix).rank_result(rank)
    return RankResult.model_validate_json(storage.get(BUCKET, key))


@pytest.mark.slow
def test_global_metrics_equal_metrics_of_all_predictions(
    storage: Storage, model_spec: str, dataset: list[Any]
) -> None:
    # GIVEN a run of 4 partitions over 3 ranks
    pointer = _start(storage, model_spec, world_size=3)
    # WHEN every rank runs and the run is summarized
    results = [run_rank(_item(pointer, r), storage) for r in range(3)]
    summary = summarize(pointer, storage)
    # THEN every sample of the dataset was predicted once
    assert summary.status == "ok"
    assert not summary.failed_ranks
    assert summary.samples == sum(SIZES) == sum(r.samples for r in results)
    assert [r.partitions for r in results] == [2, 1, 1]
    # and the global metrics are those of the concatenated predictions, computed independently
    images = np.concatenate([p.images for p in dataset])
    magnitudes = np.concatenate([p.magnitudes for p in dataset])
    z = np.concatenate([p.redshift for p in dataset])
    expected = redshift_metrics(z, linear_prediction(images, magnitudes).astype(np.float32))
    assert summary.metrics is not None
    assert expected is not None
    for name in ("mae", "mse", "bias", "nmad", "r2", "outlier_fraction"):
        assert getattr(summary.metrics, name) == pytest.approx(getattr(expected, name), rel=1e-5)
    # and the catalogue holds one row per galaxy
    rows = storage.get(BUCKET, summary.outputs["predictions_csv"]).decode().splitlines()
    assert rows[0] == "object_id,partition,z_spec,z_pred"
    ids = sorted(int(r.split(",")[0]) for r in rows[1:])
    assert ids == list(range(sum(SIZES)))
    # and the summary is stored as JSON and as Markdown
    stored = json.loads(storage.get(BUCKET, summary.outputs["summary_json"]))
    assert stored["samples"] == sum(SIZES)
    assert "| MAE |" in storage.get(BUCKET, summary.outputs["summary_md"]).decode()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_partition_fails_its_rank_only(
    storage: Storage, model_spec: str, dataset: list[Any], damage: str
) -> None:
    # GIVEN partition 3 damaged after planning's listing
    pointer = _start(storage, model_spec, world_size=4)
    good = storage.get(BUCKET, "data/3.safetensors")
    bad = good[: len(good) // 2] if damage == "truncate" else b"\x00" * 8 + good[8:]
    storage.put(BUCKET, "data/3.safetensors", bad)
    # WHEN the ranks run
    ok = [run_rank(_item(pointer, r), storage) for r in (0, 1, 3)]
    with pytest.raises(RankFailedError, match=r"rank 2 failed: partition .*data/3\.safetensors"):
        run_rank(_item(pointer, 2), storage)
    # THEN rank 2's result says why, and the other ranks' results are intact
    assert _result(storage, pointer, 2).status == "failed"
    assert "data/3.safetensors" in (_result(storage, pointer, 2).error or "")
    for result in ok:
        assert _result(storage, pointer, result.rank) == result
    # and the summary names the failed rank and counts only what succeeded
    summary = summarize(pointer, storage)
    assert summary.status == "partial"
    assert list(summary.failed_ranks) == [2]
    assert summary.samples == sum(SIZES) - SIZES[2]


def test_rerun_rank_replaces_its_result_atomically(
    storage: Storage, model_spec: str, dataset: list[Any]
) -> None:
    # GIVEN a rank that already finished
    pointer = _start(storage, model_spec, world_size=2)
    first = run_rank(_item(pointer, 0), storage)
    run_rank(_item(pointer, 1), storage)
    # WHEN it runs again
    second = run_rank(_item(pointer, 0), storage)
    # THEN the result points at the new attempt's predictions; the old ones stay (a reader
    # may have read the old result a moment ago) until Summarize, which counts the rank once
    # and removes them
    assert second.attempt != first.attempt
    assert _result(storage, pointer, 0).attempt == second.attempt
    layout = RunLayout(pointer.run_prefix)
    assert first.predictions_key is not None
    assert second.predictions_key is not None
    keys = [o.key for o in storage.list(BUCKET, layout.rank_prefix(0))]
    assert sorted(keys) == sorted(
        [first.predictions_key, second.predictions_key, layout.rank_result(0)]
    )
    assert summarize(pointer, storage).samples == sum(SIZES)
    keys = [o.key for o in storage.list(BUCKET, layout.rank_prefix(0))]
    assert sorted(keys) == sorted([second.predictions_key, layout.rank_result(0)])


def test_failed_retry_keeps_the_earlier_good_result(
    storage: Storage, model_spec: str, dataset: list[Any]
) -> None:
    pointer = _start(storage, model_spec, world_size=2)
    good = run_rank(_item(pointer, 1), storage)
    storage.put(BUCKET, "data/4.safetensors", b"broken")
    with pytest.raises(RankFailedError):
        run_rank(_item(pointer, 1), storage)
    assert _result(storage, pointer, 1) == good


def test_ranks_that_never_reported_are_named(
    storage: Storage, model_spec: str, dataset: list[Any]
) -> None:
    pointer = _start(storage, model_spec, world_size=2)
    run_rank(_item(pointer, 0), storage)
    summary = summarize(pointer, storage)
    assert summary.status == "partial"
    assert summary.failed_ranks == {1: "no result: the rank did not run or did not finish"}
    assert [r.status for r in summary.ranks] == ["ok", "missing"]


def test_rank_outside_the_plan_is_refused(
    storage: Storage, model_spec: str, dataset: list[Any]
) -> None:
    pointer = _start(storage, model_spec, world_size=2)
    with pytest.raises(RankFailedError, match="does not match the plan"):
        run_rank(_item(pointer, 0).model_copy(update={"world_size": 3}), storage)


def test_unknown_model_fails_the_rank_with_its_name(storage: Storage, dataset: list[Any]) -> None:
    pointer = _start(storage, "/nonexistent/model.onnx", world_size=1)
    with pytest.raises(RankFailedError, match=r"cannot load model /nonexistent/model\.onnx"):
        run_rank(_item(pointer, 0), storage)


def test_unlabelled_data_is_predicted_without_metrics(
    local_storage: LocalStorage, tmp_path: Path
) -> None:
    from cosmicai.data.format import Partition

    p = make_partition(10)
    unlabelled = Partition(images=p.images, magnitudes=p.magnitudes, object_id=p.object_id)
    local_storage.put(BUCKET, "data/1.safetensors", encode_partition(unlabelled))
    model = tmp_path / "m.onnx"
    model.write_bytes(linear_model())
    pointer = _start(local_storage, str(model))
    run_rank(_item(pointer, 0), local_storage)
    summary = summarize(pointer, local_storage)
    assert summary.samples == 10
    assert summary.samples_with_redshift == 0
    assert summary.metrics is None


def test_summary_draws_its_figures(local_storage: LocalStorage, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="figures need the plots extra")
    for n in (1, 2):
        local_storage.put(
            BUCKET,
            f"data/{n}.safetensors",
            encode_partition(make_partition(30, first_id=100 * n, seed=n)),
        )
    model = tmp_path / "m.onnx"
    model.write_bytes(linear_model())
    pointer = _start(local_storage, str(model), world_size=2)
    for rank in (0, 1):
        run_rank(_item(pointer, rank), local_storage)
    summary = summarize(pointer, local_storage)
    for name in ("plot_redshift", "plot_timeline"):
        png = local_storage.get(BUCKET, summary.outputs[name])
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name
    stored = json.loads(local_storage.get(BUCKET, summary.outputs["summary_json"]))
    assert stored["outputs"]["plot_timeline"].endswith("plots/timeline.png")
