"""Fault matrix, error types (issue 11, item 12): S3 throttling and 5xx are injected into
the real boto3 clients the handlers make (a botocore event hook answers chosen requests with
an S3 error, ahead of moto; no stand-in for S3), and the production ASL decides what to do
with the error name the worker raises: retry a rank whose storage was unavailable, fail a
corrupt partition at once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from harness.aws import (
    DATA_BUCKET,
    PARTITION_SAMPLES,
    Handler,
    event,
    render_definition,
    run_execution,
)

# Rank 1 of the sample state-machine input reads partition 3 alone.
RANK1_PARTITION = "25MB/3.safetensors"


@dataclass
class Faults:
    """Which S3 requests fail, and a record of what happened."""

    #: Answer requests whose URL contains this with the error below, while ``active()``.
    key: str = RANK1_PARTITION
    status: int = 503
    code: str = "SlowDown"
    active: Callable[[], bool] = lambda: True
    injected: int = 0
    #: Worker invocations per rank, and the error type each raised ("" for success).
    outcomes: dict[int, list[str]] = field(default_factory=dict)
    #: Summarize invocations so far, and whether one is running.
    summarize_calls: int = 0
    summarizing: bool = False
    summarize_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def invocations(self, rank: int) -> int:
        with self.lock:
            return len(self.outcomes.get(rank, []))


@pytest.fixture
def faults(handlers: dict[str, Handler]) -> Iterator[Faults]:
    from botocore.awsrequest import AWSResponse, HTTPHeaders
    from moto.core.botocore_stubber import MockRawResponse

    state = Faults()

    def hook(request: Any, **_: Any) -> AWSResponse | None:
        if state.key not in request.url or not state.active():
            return None
        with state.lock:
            state.injected += 1
        body = (
            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{state.code}</Code>"
            "<Message>injected by the fault matrix</Message></Error>"
        )
        return AWSResponse(
            request.url,
            state.status,
            HTTPHeaders.from_dict({"Content-Type": "application/xml"}),
            MockRawResponse(body.encode()),
        )

    worker = handlers["worker"]

    def recording_worker(payload: dict[str, Any], context: Any) -> dict[str, Any]:
        rank = int(payload["rank"])
        with state.lock:
            state.outcomes.setdefault(rank, []).append("running")
            position = len(state.outcomes[rank]) - 1
        try:
            result = worker(payload, context)
        except Exception as exc:
            state.outcomes[rank][position] = type(exc).__name__
            raise
        state.outcomes[rank][position] = ""
        return result

    summarize = handlers["summarize"]

    def recording_summarize(payload: dict[str, Any], context: Any) -> dict[str, Any]:
        state.summarize_calls += 1
        state.summarizing = True
        try:
            return summarize(payload, context)
        except Exception as exc:
            state.summarize_errors.append(type(exc).__name__)
            raise
        finally:
            state.summarizing = False

    handlers["worker"] = recording_worker
    handlers["summarize"] = recording_summarize
    # Clients made from the default session after this (the handlers' own) carry the hook,
    # registered first so it answers before moto does.
    events = boto3._get_default_session().events
    # (botocore types handlers as returning None; before-send ones may answer the request)
    events.register_first("before-send.s3", hook, unique_id="cosmicai-faults")  # type: ignore[arg-type]
    try:
        yield state
    finally:
        events.unregister("before-send.s3", unique_id="cosmicai-faults")
        handlers["worker"] = worker
        handlers["summarize"] = summarize


def _summary(data_bucket: Any, execution: dict[str, Any]) -> dict[str, Any]:
    keys = [
        o["Key"]
        for o in data_bucket.list_objects_v2(Bucket=DATA_BUCKET, Prefix="runs/")["Contents"]
        if o["Key"].endswith("summary.json")
    ]
    (key,) = keys
    summary: dict[str, Any] = json.loads(
        data_bucket.get_object(Bucket=DATA_BUCKET, Key=key)["Body"].read()
    )
    return summary


@pytest.mark.slow
def test_brief_throttling_is_absorbed_by_the_workers_own_retries(
    sfn: Any, state_machine: str, data_bucket: Any, faults: Faults
) -> None:
    # GIVEN S3 throttling rank 1's partition for its first two requests
    faults.active = lambda: faults.injected < 2
    # WHEN the run executes
    execution = run_execution(sfn, state_machine, event("state-machine.json"))
    # THEN the client's backoff absorbed it: one invocation per rank, the run ok
    assert faults.injected == 2
    assert execution["status"] == "SUCCEEDED", execution
    assert faults.outcomes == {0: [""], 1: [""]}
    assert _summary(data_bucket, execution)["samples"] == 3 * PARTITION_SAMPLES


@pytest.mark.slow
@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError")])
def test_storage_outage_fails_the_rank_transiently_and_the_map_retries_it(
    sfn: Any,
    state_machine: str,
    data_bucket: Any,
    faults: Faults,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    code: str,
) -> None:
    # GIVEN S3 failing every request for rank 1's partition during its first invocation,
    # past the client's retries
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    faults.status, faults.code = status, code
    faults.active = lambda: faults.invocations(1) <= 1
    # WHEN the run executes
    execution = run_execution(sfn, state_machine, event("state-machine.json"))
    # THEN the first attempt failed with the transient error name, the ASL retried the rank,
    # and the run succeeded with every sample
    assert faults.outcomes[1] == ["StorageUnavailableError", ""]
    assert faults.outcomes[0] == [""]
    assert execution["status"] == "SUCCEEDED", execution
    assert _summary(data_bucket, execution)["status"] == "ok"


@pytest.mark.slow
def test_corrupt_partition_fails_at_once_with_its_own_error_name(
    sfn: Any, state_machine: str, data_bucket: Any, faults: Faults
) -> None:
    # GIVEN rank 1's partition corrupt (no storage fault at all)
    faults.active = lambda: False
    data_bucket.put_object(Bucket=DATA_BUCKET, Key=RANK1_PARTITION, Body=b"not a partition")
    # WHEN the run executes
    execution = run_execution(sfn, state_machine, event("state-machine.json"))
    # THEN rank 1 failed once, named as a corrupt partition, and was not retried
    assert faults.outcomes[1] == ["CorruptPartitionError"]
    assert execution["status"] == "FAILED"
    summary = _summary(data_bucket, execution)
    assert RANK1_PARTITION in summary["failed_ranks"]["1"]


@pytest.mark.slow
def test_summarize_retries_a_transient_storage_error(
    sfn: Any,
    state_machine: str,
    data_bucket: Any,
    faults: Faults,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN S3 throttling reads of the run's plan during Summarize's first invocation, past
    # the client's retries
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    faults.key, faults.status, faults.code = "/plan.json", 503, "SlowDown"
    faults.active = lambda: faults.summarizing and faults.summarize_calls == 1
    # WHEN the run executes
    execution = run_execution(sfn, state_machine, event("state-machine.json"))
    # THEN Summarize failed once with TransientStorageError, was retried and succeeded
    assert faults.injected >= 1
    assert faults.summarize_calls == 2
    assert faults.summarize_errors == ["TransientStorageError"]
    assert execution["status"] == "SUCCEEDED", execution
    assert json.loads(execution["output"])["status"] == "ok"


def test_asl_retries_only_named_transient_errors() -> None:
    # GIVEN the production ASL as CloudFormation renders it
    import cosmicai.exceptions as errors

    definition = render_definition(
        {
            "InitializeFunctionArn": "a",
            "WorkerFunctionArn": "b",
            "SummarizeFunctionArn": "c",
            "MaxConcurrency": "1",
            "ToleratedFailurePercentage": "0",
            "MapChildType": "STANDARD",
        }
    )
    states = dict(definition["States"])
    states.update(definition["States"]["Distributed Test"]["ItemProcessor"]["States"])
    retried = {
        name: {e for r in s.get("Retry", []) for e in r["ErrorEquals"]}
        for name, s in states.items()
        if s["Type"] == "Task"
    }
    # THEN every error name it retries is one of ours (the class name is the errorType), and
    # permanent faults are never retried
    ours = {e for names in retried.values() for e in names if not e.startswith("Lambda.")}
    assert ours == {"StorageUnavailableError", "TransientStorageError"}
    assert all(issubclass(getattr(errors, name), errors.CosmicAIError) for name in ours)
    assert "StorageUnavailableError" in retried["Worker"]
    assert "TransientStorageError" in retried["Initialize"] & retried["Summarize"]
    permanent = {"CorruptPartitionError", "BadModelError", "InvalidRunError", "RankFailedError"}
    assert not permanent & set().union(*retried.values())
