"""The object keys of a run are a contract with the docs, the state machine and the users'
scripts: pin them here, once."""

from __future__ import annotations

from cosmicai.run_types import RunLayout, RunPointer


def test_run_layout_keys_are_the_documented_ones() -> None:
    layout = RunLayout("runs/r1/")
    assert layout.request == "runs/r1/request.json"
    assert layout.plan == "runs/r1/plan.json"
    assert layout.manifest == "runs/r1/manifest.json"
    assert layout.rank_result(7) == "runs/r1/ranks/00007/result.json"
    assert layout.predictions(7, "abc") == "runs/r1/ranks/00007/predictions-abc.safetensors"
    assert layout.comm_prefix == "runs/r1/comm/"
    assert layout.reduced == "runs/r1/reduced.json"
    assert layout.summary_json == "runs/r1/summary.json"
    assert layout.summary_md == "runs/r1/summary.md"
    assert layout.predictions_csv == "runs/r1/predictions.csv"
    assert layout.plot("timeline.png") == "runs/r1/plots/timeline.png"


def test_work_items_are_one_per_rank_of_the_pointer() -> None:
    pointer = RunPointer(
        run_id="r1",
        bucket="b",
        run_prefix="runs/r1/",
        plan_key="runs/r1/plan.json",
        manifest_key="runs/r1/manifest.json",
        world_size=3,
        partitions=5,
        bytes=10,
    )
    items = pointer.work_items()
    assert [i.rank for i in items] == [0, 1, 2]
    assert {(i.run_id, i.bucket, i.run_prefix, i.world_size) for i in items} == {
        ("r1", "b", "runs/r1/", 3)
    }
