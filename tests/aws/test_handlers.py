"""Each Lambda handler called with the sample events, against moto S3."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from cosmicai.exceptions import InvalidRequestError, RankFailedError
from cosmicai.run_types import RunLayout
from harness.aws import DATA_BUCKET, PARTITION_SAMPLES, FakeLambdaContext, Handler, event


def test_sample_events_run_through_every_handler(
    handlers: dict[str, Handler],
    data_bucket: Any,
    log_stream: io.StringIO,
    capsys: pytest.CaptureFixture[str],
) -> None:
    context = FakeLambdaContext()
    # GIVEN the Initialize sample event
    # WHEN Initialize handles it
    pointer = handlers["initialize"](event("initialize.json"), context)
    # THEN it returns the pointer the Summarize sample event holds
    expected = event("summarize.json")
    for key in ("run_id", "bucket", "run_prefix", "plan_key", "manifest_key", "world_size"):
        assert pointer[key] == expected[key], key
    # and the worker sample event (rank 0) and rank 1 run
    worker = event("worker.json")
    results = [handlers["worker"]({**worker, "rank": rank}, context) for rank in (0, 1)]
    assert [r["status"] for r in results] == ["ok", "ok"]
    # and Summarize reports every sample
    summary = handlers["summarize"](event("summarize.json"), context)
    assert summary["status"] == "ok"
    assert summary["samples"] == 3 * PARTITION_SAMPLES
    stored = json.loads(
        data_bucket.get_object(Bucket=DATA_BUCKET, Key=summary["summary_key"])["Body"].read()
    )
    assert stored["metrics"]["samples"] == 3 * PARTITION_SAMPLES
    # and every log line of the worker carries the run id and rank; metrics are EMF
    logs = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    worker_logs = [line for line in logs if line.get("message") == "rank done"]
    assert {(line["run_id"], line["rank"]) for line in worker_logs} == {
        ("example-run", 0),
        ("example-run", 1),
    }
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    emf = [line for line in printed if "_aws" in line]
    assert any("Samples" in line and line.get("stage") == "worker" for line in emf)


def test_original_cosmicai_payload_is_accepted(
    handlers: dict[str, Handler], data_bucket: Any, log_stream: io.StringIO
) -> None:
    pointer = handlers["initialize"](event("cosmicai-original.json"), FakeLambdaContext())
    assert pointer["partitions"] == 3  # file_limit 11, 3 partitions present
    assert pointer["run_prefix"].startswith("result-partition-100MB/1GB/1/")
    out = log_stream.getvalue()
    assert "ignored request fields" in out
    assert "S3_object_name" in out


def test_bad_event_raises_the_error_type_the_state_machine_catches(
    handlers: dict[str, Handler], data_bucket: Any
) -> None:
    bad = {k: v for k, v in event("cosmicai-original.json").items() if k != "bucket"}
    with pytest.raises(InvalidRequestError, match="bucket: required field is missing"):
        handlers["initialize"](bad, FakeLambdaContext())
    with pytest.raises(InvalidRequestError, match="rank"):
        handlers["worker"]({**event("worker.json"), "rank": -1}, FakeLambdaContext())
    with pytest.raises(InvalidRequestError, match="run_prefix"):
        handlers["summarize"]({"run_id": "x"}, FakeLambdaContext())


def test_requests_outside_the_deployment_are_refused(
    handlers: dict[str, Handler], data_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a deployment limited to its bucket and a results prefix
    monkeypatch.setenv("COSMICAI_BUCKET", DATA_BUCKET)
    monkeypatch.setenv("COSMICAI_RESULTS_PREFIX", "runs/")
    # WHEN a request names another bucket and writes elsewhere
    request = {**event("initialize.json"), "data_bucket": "someone-elses", "result_path": "out"}
    # THEN Initialize names both problems before anything is written
    with pytest.raises(InvalidRequestError) as caught:
        handlers["initialize"](request, FakeLambdaContext())
    assert "data_bucket: 'someone-elses' is not this deployment's bucket" in str(caught.value)
    assert "result_path: 'out/' must start with 'runs/'" in str(caught.value)
    assert "Contents" not in data_bucket.list_objects_v2(Bucket=DATA_BUCKET, Prefix="out/")


def test_deployment_memory_is_used_for_the_bill(
    handlers: dict[str, Handler], data_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSMICAI_WORKER_MEMORY_MB", "10240")
    handlers["initialize"](event("initialize.json"), FakeLambdaContext())
    plan = json.loads(
        data_bucket.get_object(Bucket=DATA_BUCKET, Key="runs/example-run/plan.json")["Body"].read()
    )
    assert plan["request"]["memory_mb"] == 10240


def test_failing_rank_raises_rank_failed(handlers: dict[str, Handler], data_bucket: Any) -> None:
    handlers["initialize"](event("initialize.json"), FakeLambdaContext())
    data_bucket.put_object(Bucket=DATA_BUCKET, Key="25MB/1.safetensors", Body=b"broken")
    with pytest.raises(RankFailedError, match=r"25MB/1\.safetensors"):
        handlers["worker"](event("worker.json"), FakeLambdaContext())


def test_first_invocation_of_a_container_carries_its_cold_start(
    handlers: dict[str, Handler], data_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cosmicai.aws import stages

    # GIVEN a fresh container (no invocation served yet)
    monkeypatch.setattr(stages, "_served", False)
    context = FakeLambdaContext()
    handlers["initialize"](event("initialize.json"), context)
    worker = event("worker.json")
    # WHEN it serves two ranks
    for rank in (0, 1):
        handlers["worker"]({**worker, "rank": rank}, context)
    # THEN only the first rank's result carries the process's start-up (Lambda bills INIT once)
    first, second = (
        json.loads(
            data_bucket.get_object(
                Bucket=DATA_BUCKET, Key=RunLayout(worker["run_prefix"]).rank_result(rank)
            )["Body"].read()
        )["timings"]["cold_start_s"]
        for rank in (0, 1)
    )
    assert 0 < first <= stages.process_age_s()
    assert second == 0.0
