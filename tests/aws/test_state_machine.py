"""The production ASL, executed by moto's Step Functions interpreter, with our real handlers.

moto runs the definition (Initialize -> Distributed Map -> Summarize) and invokes Lambda
through its Docker-free backend, which by default echoes the payload; the test patches that
one method to call our handlers in-process. The interpreter's gaps (no EXPRESS children, no
integer ToleratedFailurePercentage; a failed child yields null while the execution succeeds,
so item counts are asserted through DescribeMapRun) are bridged here, never in the production
ASL.
"""

from __future__ import annotations

import json
import os
from typing import Any

from harness.aws import DATA_BUCKET, PARTITION_SAMPLES, event, run_execution


def test_successful_run_with_several_ranks(sfn: Any, state_machine: str, data_bucket: Any) -> None:
    # GIVEN the state machine's sample input (3 partitions, 2 ranks)
    # WHEN executed
    execution = run_execution(sfn, state_machine, event("state-machine.json"))
    # THEN it succeeds with Summarize's report of every sample
    assert execution["status"] == "SUCCEEDED", execution
    output = json.loads(execution["output"])
    assert output["status"] == "ok"
    assert output["samples"] == 3 * PARTITION_SAMPLES
    summary = json.loads(
        data_bucket.get_object(Bucket=DATA_BUCKET, Key=output["summary_key"])["Body"].read()
    )
    assert summary["world_size"] == 2
    assert summary["ranks_ok"] == 2
    # and the bill prices the Map's children as the template's parameter says
    cost = summary["performance"]["cost"]
    assert cost["map_child_type"] == os.environ["COSMICAI_MAP_CHILD_TYPE"]
    assert cost["step_functions"] > 0
    # and the Map ran one child per rank
    (map_run,) = sfn.list_map_runs(executionArn=execution["executionArn"])["mapRuns"]
    counts = sfn.describe_map_run(mapRunArn=map_run["mapRunArn"])["itemCounts"]
    assert counts["succeeded"] == 2
    assert counts["failed"] == 0


def test_failing_rank_is_counted_and_named(sfn: Any, state_machine: str, data_bucket: Any) -> None:
    # GIVEN partition 3 (rank 1's) corrupt
    data_bucket.put_object(Bucket=DATA_BUCKET, Key="25MB/3.safetensors", Body=b"not a partition")
    # WHEN the run executes
    execution = run_execution(sfn, state_machine, event("state-machine.json"))
    # THEN the Map run counts the failed item
    (map_run,) = sfn.list_map_runs(executionArn=execution["executionArn"])["mapRuns"]
    counts = sfn.describe_map_run(mapRunArn=map_run["mapRunArn"])["itemCounts"]
    assert counts["failed"] == 1
    assert counts["succeeded"] == 1
    # and Summarize still ran: the summary names rank 1 and why, and counts rank 0's samples
    summaries = [
        o["Key"]
        for o in data_bucket.list_objects_v2(Bucket=DATA_BUCKET, Prefix="runs/")["Contents"]
        if o["Key"].endswith("summary.json")
    ]
    (key,) = summaries
    summary = json.loads(data_bucket.get_object(Bucket=DATA_BUCKET, Key=key)["Body"].read())
    assert summary["status"] == "partial"
    assert list(summary["failed_ranks"]) == ["1"]
    assert "25MB/3.safetensors" in summary["failed_ranks"]["1"]
    assert summary["samples"] == 2 * PARTITION_SAMPLES
    # and the execution itself reports the failure
    assert execution["status"] == "FAILED"
    assert execution.get("error") == "RanksFailed"


def test_bad_request_fails_with_our_error_type(
    sfn: Any, state_machine: str, data_bucket: Any
) -> None:
    request = {k: v for k, v in event("cosmicai-original.json").items() if k != "bucket"}
    execution = run_execution(sfn, state_machine, request)
    assert execution["status"] == "FAILED"
    assert execution["error"] == "InvalidRequestError"
    assert "bucket: required field is missing" in execution["cause"]
